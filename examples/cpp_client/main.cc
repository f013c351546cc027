// neqforce_client: a minimal C++ client of the neqforce v1 force service (protos/neqforce/v1).
//
//   neqforce_client info   [--server HOST:PORT]
//   neqforce_client health [--server HOST:PORT] [--service NAME]
//   neqforce_client forces --lx LX --ly LY [--in FILE|-] [--out FILE|-] [--density-out FILE]
//                          [--backend auto|onnx|negf] [--model NAME] [--param NAME=VALUE]...
//   neqforce_client stream (same options as forces)
//
// Lattices are read as raw little-endian float64 in C order (flat site index x * ly + y, see
// docs/physics.md "Arrays"): `forces` sends the whole input as one request of shape [batch, lx, ly]
// (batch = values / (lx * ly); [lx, ly] when it is 1), `stream` sends every lattice as its own message on
// one StreamForces stream (request, response, request, ... as a Brownian-dynamics loop would).
// Forces (and densities) are written as raw little-endian float64 of the same shape; FP32 answers of the
// ONNX backend are widened exactly. A one-line summary per response goes to stderr.
// Common options: --token TOKEN (or env NEQFORCE_TOKEN; sent as "authorization: Bearer TOKEN"),
// --ca FILE (TLS with this root certificate; plaintext without), --timeout SECONDS (deadline, default 60).
// Errors: one line "error: ..." on stderr and exit status 1 (2 for usage errors).

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"
#include "neqforce/v1/force_service.grpc.pb.h"

namespace {

namespace pb = neqforce::v1;
namespace hpb = grpc::health::v1;

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string command;
  std::string server = "127.0.0.1:50051";
  std::string token;
  std::string ca;
  double timeout_s = 60.0;
  std::string service = "neqforce.v1.ForceService";
  int64_t lx = 0, ly = 0;
  std::string in = "-", out = "-", density_out;
  pb::Backend backend = pb::BACKEND_AUTO;
  std::string model, request_id;
  std::map<std::string, double> params;
};

const char* kUsage =
    "usage: neqforce_client {info|health|forces|stream} [--server HOST:PORT] [--token T] [--ca FILE]\n"
    "       [--timeout S] [--service NAME] [--lx LX --ly LY] [--in FILE|-] [--out FILE|-]\n"
    "       [--density-out FILE] [--backend auto|onnx|negf] [--model NAME] [--param NAME=VALUE]...\n"
    "       [--request-id ID]\n";

double parse_double(const std::string& text, const std::string& what) {
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0') throw UsageError(what + " must be a number, got '" + text + "'");
  return v;
}

int64_t parse_positive(const std::string& text, const std::string& what) {
  char* end = nullptr;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || v <= 0) throw UsageError(what + " must be a positive integer");
  return v;
}

Options parse_args(int argc, char** argv) {
  Options o;
  if (const char* env = std::getenv("NEQFORCE_TOKEN")) o.token = env;
  if (argc < 2) throw UsageError("missing command");
  o.command = argv[1];
  if (o.command != "info" && o.command != "health" && o.command != "forces" && o.command != "stream")
    throw UsageError("unknown command '" + o.command + "'");
  for (int i = 2; i < argc; ++i) {
    std::string key = argv[i];
    if (i + 1 >= argc) throw UsageError("option " + key + " needs a value");
    std::string val = argv[++i];
    if (key == "--server") o.server = val;
    else if (key == "--token") o.token = val;
    else if (key == "--ca") o.ca = val;
    else if (key == "--timeout") o.timeout_s = parse_double(val, "--timeout");
    else if (key == "--service") o.service = val;
    else if (key == "--lx") o.lx = parse_positive(val, "--lx");
    else if (key == "--ly") o.ly = parse_positive(val, "--ly");
    else if (key == "--in") o.in = val;
    else if (key == "--out") o.out = val;
    else if (key == "--density-out") o.density_out = val;
    else if (key == "--model") o.model = val;
    else if (key == "--request-id") o.request_id = val;
    else if (key == "--backend") {
      if (val == "auto") o.backend = pb::BACKEND_AUTO;
      else if (val == "onnx") o.backend = pb::BACKEND_ONNX;
      else if (val == "negf") o.backend = pb::BACKEND_NEGF;
      else throw UsageError("--backend must be auto, onnx or negf, got '" + val + "'");
    } else if (key == "--param") {
      auto eq = val.find('=');
      if (eq == std::string::npos || eq == 0) throw UsageError("--param needs NAME=VALUE, got '" + val + "'");
      o.params[val.substr(0, eq)] = parse_double(val.substr(eq + 1), "--param " + val.substr(0, eq));
    } else {
      throw UsageError("unknown option " + key);
    }
  }
  if (!(o.timeout_s > 0)) throw UsageError("--timeout must be > 0");
  if ((o.command == "forces" || o.command == "stream") && (o.lx == 0 || o.ly == 0))
    throw UsageError(o.command + " needs --lx and --ly");
  return o;
}

bool little_endian() {
  const uint16_t one = 1;
  unsigned char byte;
  std::memcpy(&byte, &one, 1);
  return byte == 1;
}

std::string read_all(const std::string& path) {
  if (path == "-") return std::string(std::istreambuf_iterator<char>(std::cin), {});
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read input file " + path);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void write_all(const std::string& path, const std::vector<double>& values) {
  const char* data = reinterpret_cast<const char*>(values.data());
  const std::streamsize size = static_cast<std::streamsize>(values.size() * sizeof(double));
  if (path == "-") {
    std::cout.write(data, size);
    std::cout.flush();
    if (!std::cout) throw std::runtime_error("cannot write to stdout");
    return;
  }
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(data, size);
  f.close();
  if (!f) throw std::runtime_error("cannot write output file " + path);
}

// Appends the values of a response tensor to `out` as float64 (FP32 widened exactly); checks the shape.
void append_tensor(const pb::Tensor& t, int64_t expected, std::vector<double>& out, const char* what) {
  int64_t count = 1;
  for (int64_t d : t.shape()) count *= d;
  if (count != expected) throw std::runtime_error(std::string("response ") + what + " has a wrong shape");
  const std::string& raw = t.raw_contents();
  if (t.dtype() == pb::DATA_TYPE_FP64 && raw.size() == static_cast<size_t>(count) * 8) {
    const size_t start = out.size();
    out.resize(start + count);
    std::memcpy(out.data() + start, raw.data(), raw.size());
  } else if (t.dtype() == pb::DATA_TYPE_FP32 && raw.size() == static_cast<size_t>(count) * 4) {
    std::vector<float> f(count);
    std::memcpy(f.data(), raw.data(), raw.size());
    out.insert(out.end(), f.begin(), f.end());
  } else {
    throw std::runtime_error(std::string("response ") + what + " has an unknown dtype or byte count");
  }
}

std::string status_name(grpc::StatusCode code) {
  static const char* names[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
                                "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return (i >= 0 && i <= 16) ? names[i] : "STATUS_" + std::to_string(i);
}

struct RpcError : std::runtime_error {
  explicit RpcError(const grpc::Status& s)
      : std::runtime_error(status_name(s.error_code()) + ": " + s.error_message()) {}
};

class Client {
 public:
  explicit Client(const Options& o) : o_(o) {
    std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
    if (!o.ca.empty()) {
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = read_all(o.ca);
      creds = grpc::SslCredentials(ssl);
    }
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    channel_ = grpc::CreateCustomChannel(o.server, creds, args);
    stub_ = pb::ForceService::NewStub(channel_);
  }

  void setup(grpc::ClientContext& ctx) const {
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::microseconds(static_cast<int64_t>(o_.timeout_s * 1e6)));
    if (!o_.token.empty()) ctx.AddMetadata("authorization", "Bearer " + o_.token);
  }

  int info() {
    grpc::ClientContext ctx;
    setup(ctx);
    pb::GetServerInfoResponse r;
    grpc::Status s = stub_->GetServerInfo(&ctx, pb::GetServerInfoRequest(), &r);
    if (!s.ok()) throw RpcError(s);
    std::cout << "name: " << r.name() << "\nversion: " << r.version() << "\napi: " << r.api()
              << "\nauth_required: " << (r.auth_required() ? "true" : "false") << "\n";
    for (const auto& b : r.backends()) {
      std::cout << "backend: " << pb::Backend_Name(b.backend()) << " available=" << b.available()
                << " detail=" << b.detail() << "\n";
    }
    for (const auto& m : r.models()) {
      std::cout << "model: " << m.name() << " path=" << m.path() << " descriptor=" << m.descriptor_name()
                << " sha256=" << m.sha256() << "\n";
    }
    const auto& l = r.limits();
    std::cout << "limits: max_sites=" << l.max_sites() << " negf_max_sites=" << l.negf_max_sites()
              << " max_concurrency=" << l.max_concurrency() << " max_queue=" << l.max_queue()
              << " max_message_bytes=" << l.max_message_bytes() << "\n";
    std::cout << "routing: rtol=" << r.routing().rtol() << "\n";
    std::map<std::string, double> defaults(r.default_parameters().begin(), r.default_parameters().end());
    for (const auto& [name, value] : defaults) std::cout << "default: " << name << "=" << value << "\n";
    return 0;
  }

  int health() {
    auto stub = hpb::Health::NewStub(channel_);
    grpc::ClientContext ctx;
    setup(ctx);
    hpb::HealthCheckRequest req;
    req.set_service(o_.service);
    hpb::HealthCheckResponse r;
    grpc::Status s = stub->Check(&ctx, req, &r);
    if (!s.ok()) throw RpcError(s);
    std::cout << hpb::HealthCheckResponse::ServingStatus_Name(r.status()) << "\n";
    return r.status() == hpb::HealthCheckResponse::SERVING ? 0 : 1;
  }

  int forces(bool stream) {
    const std::string raw = read_all(o_.in);
    const int64_t sites = o_.lx * o_.ly;
    if (raw.empty() || raw.size() % (8 * static_cast<size_t>(sites)) != 0)
      throw std::runtime_error("input has " + std::to_string(raw.size()) + " bytes: not a whole number of " +
                               std::to_string(o_.lx) + "x" + std::to_string(o_.ly) + " float64 lattices");
    const int64_t frames = static_cast<int64_t>(raw.size() / (8 * sites));
    std::vector<double> force, density;
    if (!stream) {
      pb::ComputeForcesRequest req = request(raw, frames);
      grpc::ClientContext ctx;
      setup(ctx);
      pb::ComputeForcesResponse r;
      grpc::Status s = stub_->ComputeForces(&ctx, req, &r);
      if (!s.ok()) throw RpcError(s);
      take(r, frames * sites, force, density);
    } else {
      grpc::ClientContext ctx;
      setup(ctx);
      auto rw = stub_->StreamForces(&ctx);
      for (int64_t f = 0; f < frames; ++f) {
        const std::string one = raw.substr(static_cast<size_t>(f * sites * 8), static_cast<size_t>(sites * 8));
        pb::ComputeForcesResponse r;
        if (!rw->Write(request(one, 1)) || !rw->Read(&r)) {
          rw->WritesDone();
          grpc::Status s = rw->Finish();
          if (!s.ok()) throw RpcError(s);
          throw std::runtime_error("stream ended before lattice " + std::to_string(f));
        }
        take(r, sites, force, density);
      }
      rw->WritesDone();
      grpc::Status s = rw->Finish();
      if (!s.ok()) throw RpcError(s);
    }
    write_all(o_.out, force);
    if (!o_.density_out.empty()) write_all(o_.density_out, density);
    return 0;
  }

 private:
  pb::ComputeForcesRequest request(const std::string& raw, int64_t frames) const {
    pb::ComputeForcesRequest req;
    pb::Tensor* q = req.mutable_q();
    if (frames > 1) q->add_shape(frames);
    q->add_shape(o_.lx);
    q->add_shape(o_.ly);
    q->set_dtype(pb::DATA_TYPE_FP64);
    q->set_raw_contents(raw);
    for (const auto& [name, value] : o_.params) (*req.mutable_parameters())[name] = value;
    req.set_backend(o_.backend);
    req.set_want_density(!o_.density_out.empty());
    req.set_model(o_.model);
    req.set_request_id(o_.request_id);
    return req;
  }

  void take(const pb::ComputeForcesResponse& r, int64_t count, std::vector<double>& force,
            std::vector<double>& density) const {
    append_tensor(r.force(), count, force, "force");
    if (!o_.density_out.empty()) append_tensor(r.density(), count, density, "density");
    std::fprintf(stderr, "%s model=%s compute_seconds=%.6f reason=%s\n",
                 pb::Backend_Name(r.backend()).c_str(), r.model().c_str(), r.compute_seconds(),
                 r.reason().c_str());
  }

  const Options& o_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::ForceService::Stub> stub_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  Options o;
  try {
    o = parse_args(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "error: " << e.what() << " (neqforce_client --help for usage)\n";
    return 2;
  }
  if (!little_endian()) {
    std::cerr << "error: this client assumes a little-endian host (the protocol's byte order)\n";
    return 1;
  }
  try {
    Client client(o);
    if (o.command == "info") return client.info();
    if (o.command == "health") return client.health();
    return client.forces(o.command == "stream");
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
