#include "simulation/report.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moe::sim {
namespace {

nlohmann::json Percentiles(const LatencyHistogram& h) {
  return {{"count", h.count()}, {"mean_s", h.MeanSeconds()}, {"p50_s", h.Percentile(0.5)}, {"p90_s", h.Percentile(0.9)},
          {"p99_s", h.Percentile(0.99)}};
}

// The link with the highest utilization; null when there are none.
const LinkReport* BusiestLink(const SimReport& r) {
  const LinkReport* busiest = nullptr;
  for (const LinkReport& l : r.links) {
    if (busiest == nullptr || l.utilization > busiest->utilization) busiest = &l;
  }
  return busiest;
}

double BytesPerToken(const SimReport& r) { return r.tokens ? r.all2all_bytes / static_cast<double>(r.tokens) : 0.0; }

}  // namespace

nlohmann::json ReportJson(const SimReport& r) {
  nlohmann::json j;
  j["requests"] = r.requests;
  j["completed"] = r.completed;
  j["rejected"] = r.rejected;
  j["tokens"] = r.tokens;
  j["makespan_s"] = r.makespan_s;
  j["tokens_per_s"] = r.tokens_per_s;
  j["requests_per_s"] = r.requests_per_s;
  j["ttft"] = Percentiles(r.ttft);
  j["inter_token"] = Percentiles(r.inter_token);
  j["end_to_end"] = Percentiles(r.end_to_end);
  j["all2all_bytes"] = r.all2all_bytes;
  j["all2all_bytes_per_token"] = BytesPerToken(r);
  j["layers_per_token"] = r.layers_per_token;
  j["steps"] = r.steps;
  j["events"] = r.events;
  for (const LinkReport& l : r.links) j["links"].push_back({{"name", l.name}, {"bytes", l.bytes}, {"utilization", l.utilization}});
  for (const WorkerReport& w : r.workers) {
    j["workers"].push_back({{"replica", w.replica}, {"rank", w.rank}, {"expert_tokens", w.expert_tokens}, {"busy_fraction", w.busy_fraction}});
  }
  j["link_series"] = {{"interval_s", r.series_interval_s}, {"busiest", r.busiest_link_series}, {"mean", r.mean_link_series}};
  return j;
}

std::string ReportCsvHeader() {
  return "label,requests,completed,rejected,tokens,makespan_s,tokens_per_s,ttft_p50_s,ttft_p90_s,ttft_p99_s,itl_p50_s,itl_p90_s,"
         "itl_p99_s,all2all_bytes,layers_per_token,busiest_link_utilization\n";
}

std::string ReportCsvRow(const std::string& label, const SimReport& r) {
  const LinkReport* busiest = BusiestLink(r);
  return absl::StrFormat("%s,%d,%d,%d,%d,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.6g,%.4g,%.4g\n", label, r.requests, r.completed,
                         r.rejected, r.tokens, r.makespan_s, r.tokens_per_s, r.ttft.Percentile(0.5), r.ttft.Percentile(0.9),
                         r.ttft.Percentile(0.99), r.inter_token.Percentile(0.5), r.inter_token.Percentile(0.9),
                         r.inter_token.Percentile(0.99), r.all2all_bytes, r.layers_per_token, busiest ? busiest->utilization : 0.0);
}

std::string ReportSummary(const SimReport& r) {
  const LinkReport* busiest = BusiestLink(r);
  return absl::StrFormat(
      "requests %d (completed %d, rejected %d), tokens %d in %.3f s: %.1f tokens/s, %.2f requests/s\n"
      "TTFT        p50 %.4f s  p90 %.4f s  p99 %.4f s\n"
      "inter-token p50 %.4f s  p90 %.4f s  p99 %.4f s\n"
      "all-to-all %.4g bytes (%.1f per token), layers/token %.2f, busiest link %s at %.1f%%\n"
      "%d steps, %d events\n",
      r.requests, r.completed, r.rejected, r.tokens, r.makespan_s, r.tokens_per_s, r.requests_per_s, r.ttft.Percentile(0.5),
      r.ttft.Percentile(0.9), r.ttft.Percentile(0.99), r.inter_token.Percentile(0.5), r.inter_token.Percentile(0.9),
      r.inter_token.Percentile(0.99), r.all2all_bytes, BytesPerToken(r), r.layers_per_token,
      busiest && busiest->utilization > 0 ? busiest->name : "-", busiest ? 100 * busiest->utilization : 0.0, r.steps, r.events);
}

std::string ReportSvg(const std::string& title, const SimReport& r) {
  constexpr double kW = 420, kH = 260, kPad = 50;
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"11\">\n"
      "<text x=\"10\" y=\"16\" font-size=\"14\">%s</text>\n",
      static_cast<int>(2 * kW + 3 * kPad), static_cast<int>(kH + 2 * kPad), title);
  auto frame = [&](double x0, const std::string& label, const std::string& xlabel) {
    absl::StrAppendFormat(&svg, "<rect x=\"%g\" y=\"%g\" width=\"%g\" height=\"%g\" fill=\"none\" stroke=\"#444\"/>\n", x0, kPad, kW, kH);
    absl::StrAppendFormat(&svg, "<text x=\"%g\" y=\"%g\">%s</text>\n", x0, kPad - 8, label);
    absl::StrAppendFormat(&svg, "<text x=\"%g\" y=\"%g\">%s</text>\n", x0 + kW / 2 - 40, kPad + kH + 30, xlabel);
  };
  // Panel 1: latency CDFs on a log time axis.
  const double x0 = kPad;
  double lo = 1e9, hi = 0;
  for (const auto* h : {&r.ttft, &r.inter_token}) {
    for (const auto& [t, f] : h->Cdf()) lo = std::min(lo, t), hi = std::max(hi, t);
  }
  frame(x0, "latency CDF: TTFT (blue), inter-token (orange)", "seconds (log)");
  if (hi > 0) {
    const double llo = std::log10(lo) - 0.05, lhi = std::log10(hi) + 0.05;
    const char* colors[2] = {"#1f77b4", "#ff7f0e"};
    int c = 0;
    for (const auto* h : {&r.ttft, &r.inter_token}) {
      std::string points;
      for (const auto& [t, f] : h->Cdf()) {
        absl::StrAppendFormat(&points, "%.1f,%.1f ", x0 + (std::log10(t) - llo) / (lhi - llo) * kW, kPad + kH - f * kH);
      }
      absl::StrAppendFormat(&svg, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"%s\"/>\n", colors[c++], points);
    }
    absl::StrAppendFormat(&svg, "<text x=\"%g\" y=\"%g\">%.3g</text><text x=\"%g\" y=\"%g\" text-anchor=\"end\">%.3g</text>\n", x0,
                          kPad + kH + 14, std::pow(10, llo), x0 + kW, kPad + kH + 14, std::pow(10, lhi));
  }
  // Panel 2: link utilization over time.
  const double x1 = 2 * kPad + kW;
  frame(x1, "link utilization: busiest (red), mean (grey)", "seconds");
  const size_t n = r.busiest_link_series.size();
  if (n > 0) {
    double top = 1e-9;
    for (double u : r.busiest_link_series) top = std::max(top, u);
    top = std::max(top, 1e-3);
    const std::vector<double>* series[2] = {&r.busiest_link_series, &r.mean_link_series};
    const char* colors[2] = {"#d62728", "#7f7f7f"};
    for (int s = 0; s < 2; ++s) {
      std::string points;
      for (size_t i = 0; i < n; ++i) {
        absl::StrAppendFormat(&points, "%.1f,%.1f ", x1 + (static_cast<double>(i) + 0.5) / static_cast<double>(n) * kW,
                              kPad + kH - (*series[s])[i] / top * kH);
      }
      absl::StrAppendFormat(&svg, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"%s\"/>\n", colors[s], points);
    }
    absl::StrAppendFormat(&svg, "<text x=\"%g\" y=\"%g\" text-anchor=\"end\">%.1f%%</text>\n", x1 - 4, kPad + 10, 100 * top);
    absl::StrAppendFormat(&svg, "<text x=\"%g\" y=\"%g\" text-anchor=\"end\">%.3g</text>\n", x1 + kW, kPad + kH + 14,
                          r.series_interval_s * static_cast<double>(n));
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace moe::sim
