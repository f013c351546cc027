"""The .proto is usable from other languages and readable with the repository alone."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from neqforce.v1 import force_service_pb2 as pb

REPO = Path(__file__).resolve().parents[2]
PROTO = REPO / "protos" / "neqforce" / "v1" / "force_service.proto"
PHYSICS_DOC = REPO / "docs" / "physics.md"
#: Field names that collide with accessors protoc generates in C++ (descriptor(), GetDescriptor()) or
#: Java (getDescriptor(), getDefaultInstance(), getParserForType(), getSerializedSize(), ...).
CLASHING = {"descriptor", "default_instance", "parser_for_type", "serialized_size", "unknown_fields",
            "class", "reflection", "cached_size"}
PROTOBUF_JAR = Path("/usr/share/java/protobuf.jar")


def test_no_field_name_clashes_with_generated_accessors():
    for message in pb.DESCRIPTOR.message_types_by_name.values():
        clashes = {f.name for f in message.fields} & CLASHING
        assert not clashes, f"{message.name}: {clashes}"
    assert pb.ModelInfo.DESCRIPTOR.fields_by_number[5].name == "descriptor_name"  # wire-compatible rename


def test_packages_for_other_languages_are_declared():
    options = pb.DESCRIPTOR.GetOptions()
    assert options.go_package and options.java_package and options.java_multiple_files


def test_proto_cites_only_documents_in_the_repository():
    text = PROTO.read_text()
    assert not re.search(r"\bSPEC\b", text), "the .proto cites a SPEC that is not in the repository"
    headings = {line.lstrip("#").strip().split(" (")[0] for line in PHYSICS_DOC.read_text().splitlines()
                if line.startswith("#")}
    cited = re.findall(r'docs/physics\.md,?\s*((?:"[^"]+"(?:,\s*)?)+)', text)
    sections = {s for group in cited for s in re.findall(r'"([^"]+)"', group)}
    assert sections, "the .proto should point to sections of docs/physics.md"
    assert sections <= headings, f"sections missing from docs/physics.md: {sections - headings}"


@pytest.mark.skipif(not (shutil.which("javac") and shutil.which("protoc") and PROTOBUF_JAR.exists()),
                    reason="needs javac, protoc and protobuf-java (apt-get install default-jdk-headless "
                           "protobuf-compiler libprotobuf-java)")
def test_java_messages_compile(tmp_path):
    """protoc --java_out + javac: a field called `descriptor` failed here (getDescriptor() defined twice)."""
    out = tmp_path / "java"
    out.mkdir()
    subprocess.run(["protoc", f"-I{PROTO.parents[2]}", f"--java_out={out}", str(PROTO)], check=True,
                   capture_output=True, timeout=120)
    sources = [str(p) for p in out.rglob("*.java")]
    done = subprocess.run(["javac", "-nowarn", "-cp", str(PROTOBUF_JAR), "-d", str(tmp_path / "classes"),
                           *sources], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
