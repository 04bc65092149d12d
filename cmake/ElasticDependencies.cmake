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
# elastic::data only: image codecs and MATLAB list files.
find_dependency(JPEG)            # JPEG::JPEG (libjpeg-turbo)
find_dependency(PNG)             # PNG::PNG
find_dependency(PkgConfig)
if(NOT TARGET PkgConfig::MATIO)
  pkg_check_modules(MATIO REQUIRED IMPORTED_TARGET GLOBAL matio)  # Stanford Dogs' .mat lists
endif()
# elastic::onnx only: the ONNX importer. ONNX's config links protobuf::libprotobuf
# without looking for it, so Protobuf comes first.
find_dependency(Protobuf)        # protobuf::libprotobuf
find_dependency(ONNX)            # onnx, onnx_proto (libonnx-dev)
