// moe-client: prompt in, streamed text out, for people without a gRPC tool at hand.
//   moe-client --server HOST:PORT --prompt TEXT [--max-tokens N --temperature T --top-p P --top-k K --seed S
//              --stop STR --task NAME --unary --ids]
// Exit 1 with the gRPC status on failure; usage (tokens, All2All bytes) goes to stderr.
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/flags.h"
#include "grpcpp/grpcpp.h"
#include "moe/v1/inference.grpc.pb.h"
#include "proto/grpc_util.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "coordinator address");
ABSL_FLAG(std::string, prompt, "", "prompt text");
ABSL_FLAG(std::string, prompt_ids, "", "prompt as comma-separated token ids");
ABSL_FLAG(int32_t, max_tokens, 32, "tokens to generate");
ABSL_FLAG(double, temperature, 0.0, "0 = greedy");
ABSL_FLAG(double, top_p, 1.0, "nucleus mass");
ABSL_FLAG(int32_t, top_k, 0, "0 = no limit");
ABSL_FLAG(uint64_t, seed, 0, "sampling seed");
ABSL_FLAG(std::vector<std::string>, stop, {}, "stop strings");
ABSL_FLAG(std::string, task, "", "task expert map");
ABSL_FLAG(bool, unary, false, "use Complete instead of the Generate stream");
ABSL_FLAG(bool, ids, false, "print token ids instead of text");
ABSL_FLAG(int32_t, timeout_ms, 120000, "deadline of the call");

namespace {
const char* FinishName(moe::v1::FinishReason r) {
  switch (r) {
    case moe::v1::FINISH_REASON_STOP: return "stop";
    case moe::v1::FINISH_REASON_LENGTH: return "length";
    case moe::v1::FINISH_REASON_EOS: return "eos";
    case moe::v1::FINISH_REASON_ABORT: return "abort";
    default: return "unspecified";
  }
}
void Print(const moe::v1::GenerateResponse& r, bool ids) {
  if (ids) {
    for (int32_t t : r.token_ids()) std::cout << t << " ";
  } else {
    std::cout << r.text();
  }
  std::cout.flush();
}
}  // namespace

int main(int argc, char** argv) {
  moe::ParseFlags(argc, argv);
  moe::v1::GenerateRequest req;
  req.set_prompt(absl::GetFlag(FLAGS_prompt));
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_prompt_ids), ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(part, &id)) {
      std::cerr << "moe-client: --prompt-ids: '" << part << "' is not an integer\n";
      return 1;
    }
    req.add_prompt_token_ids(id);
  }
  req.set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  req.set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  req.set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  req.set_top_k(absl::GetFlag(FLAGS_top_k));
  req.set_seed(absl::GetFlag(FLAGS_seed));
  for (const std::string& s : absl::GetFlag(FLAGS_stop)) req.add_stop(s);
  req.set_task(absl::GetFlag(FLAGS_task));

  auto stub = moe::v1::Inference::NewStub(grpc::CreateChannel(absl::GetFlag(FLAGS_server), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(moe::DeadlineAfter(std::chrono::milliseconds(absl::GetFlag(FLAGS_timeout_ms))));
  moe::v1::GenerateResponse last;
  grpc::Status status;
  const bool ids = absl::GetFlag(FLAGS_ids);
  if (absl::GetFlag(FLAGS_unary)) {
    status = stub->Complete(&ctx, req, &last);
    if (status.ok()) Print(last, ids);
  } else {
    auto reader = stub->Generate(&ctx, req);
    moe::v1::GenerateResponse r;
    while (reader->Read(&r)) {
      Print(r, ids);
      last = r;
    }
    status = reader->Finish();
  }
  std::cout << std::endl;
  if (!status.ok()) {
    std::cerr << "moe-client: " << moe::FromGrpcStatus(status) << "\n";
    return 1;
  }
  std::cerr << "finish=" << FinishName(last.finish_reason()) << " prompt_tokens=" << last.usage().prompt_tokens()
            << " completion_tokens=" << last.usage().completion_tokens() << " all2all_bytes=" << last.usage().all2all_bytes()
            << "\n";
  return 0;
}
