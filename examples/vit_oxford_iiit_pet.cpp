// ViT-B/16 fine-tuned on Oxford-IIIT Pet with the reference's defaults; every flag of
// `elastic train` applies, e.g. --data_dir, --weights, --train_type, --rho.
#include "driver/example_main.hpp"

int main(int argc, char** argv) { return elastic::cli::example_main(argc, argv, "vit", "oxford_iiit_pet"); }
