// Writing a simulation's report: JSON (everything), one CSV row (the summary, for sweeps), and an SVG
// with the latency CDFs and link utilization over time.
#ifndef MOE_SIMULATION_REPORT_H_
#define MOE_SIMULATION_REPORT_H_

#include <string>

#include "nlohmann/json.hpp"
#include "simulation/serving.h"

namespace moe::sim {

nlohmann::json ReportJson(const SimReport& report);
std::string ReportCsvHeader();
std::string ReportCsvRow(const std::string& label, const SimReport& report);
std::string ReportSvg(const std::string& title, const SimReport& report);
// A few lines for a terminal.
std::string ReportSummary(const SimReport& report);

}  // namespace moe::sim

#endif  // MOE_SIMULATION_REPORT_H_
