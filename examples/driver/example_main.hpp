// The main of an example model/dataset pair: `elastic train` with the model and
// dataset preset. Declared on its own so that an example main includes neither
// CLI11 nor the engine (driver.hpp costs 13 s of compile time per file, CLI11
// alone 7.5 s) and builds in a second.
#pragma once

#include <string>

namespace elastic::cli {

int example_main(int argc, char** argv, const std::string& model, const std::string& dataset);

}  // namespace elastic::cli
