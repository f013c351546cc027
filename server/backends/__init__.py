"""neqforce subpackage."""
