# Finds the dependencies of elastic::elastic. Shared by the build tree and the
# installed package config so both resolve the same targets.
include(CMakeFindDependencyMacro)
find_dependency(dnnl)            # DNNL::dnnl (oneDNN 2.x)
find_dependency(Eigen3)          # Eigen3::Eigen
find_dependency(fmt)             # fmt::fmt
find_dependency(xtensor)         # xtensor
find_dependency(OpenMP)          # OpenMP::OpenMP_CXX: oneDNN's threading runtime
find_dependency(ZLIB)            # ZLIB::ZLIB: .gz dataset files
find_dependency(nlohmann_json)   # nlohmann_json::nlohmann_json: safetensors headers, profiles
