# Install rules and a relocatable package config so that another project can
# `find_package(elastic)` and link `elastic::elastic` (and `elastic::data`,
# `elastic::onnx` where they were built).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

# The engine, and the data and ONNX targets where their packages were found.
set(installed elastic)
foreach(target elastic_data elastic_onnx)
  if(TARGET ${target})
    list(APPEND installed ${target})
  endif()
endforeach()
install(TARGETS ${installed} EXPORT elasticTargets)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

set(ELASTIC_CMAKE_DIR ${CMAKE_INSTALL_DATADIR}/elastic/cmake)
install(EXPORT elasticTargets NAMESPACE elastic:: DESTINATION ${ELASTIC_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/elasticConfig.cmake.in
  ${PROJECT_BINARY_DIR}/elasticConfig.cmake INSTALL_DESTINATION ${ELASTIC_CMAKE_DIR})
# Header-only: the version file must not pin the consumer's pointer size.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/elasticConfigVersion.cmake
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES ${PROJECT_BINARY_DIR}/elasticConfig.cmake
              ${PROJECT_BINARY_DIR}/elasticConfigVersion.cmake
              ${PROJECT_SOURCE_DIR}/cmake/ElasticDependencies.cmake
        DESTINATION ${ELASTIC_CMAKE_DIR})
