# `cmake --install`: the broker and CLI, libsnapbus (shared with its
# SOVERSION links, and static), the public headers, snapbus.pc and the CMake
# package; and `cpack -G DEB`, which adds the systemd unit and a
# loopback-only configuration (docs/DEPLOY.md).
include(CMakePackageConfigHelpers)

install(TARGETS snapbusd snapbus_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS snapbus snapbus_static EXPORT snapbusTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} NAMELINK_COMPONENT Unspecified
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${CMAKE_SOURCE_DIR}/include/snapbus/snapbus.h
              ${CMAKE_SOURCE_DIR}/include/snapbus/snapbus_common.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/snapbus)

file(RELATIVE_PATH SB_PC_TO_PREFIX
     "/p/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/p")
configure_file(${CMAKE_SOURCE_DIR}/cmake/snapbus.pc.in
               ${CMAKE_BINARY_DIR}/snapbus.pc @ONLY)
install(FILES ${CMAKE_BINARY_DIR}/snapbus.pc
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

set(SB_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/snapbus)
install(EXPORT snapbusTargets NAMESPACE snapbus:: DESTINATION ${SB_CMAKE_DIR})
configure_package_config_file(${CMAKE_SOURCE_DIR}/cmake/snapbusConfig.cmake.in
  ${CMAKE_BINARY_DIR}/snapbusConfig.cmake INSTALL_DESTINATION ${SB_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_BINARY_DIR}/snapbusConfigVersion.cmake
  VERSION ${SB_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_BINARY_DIR}/snapbusConfig.cmake
              ${CMAKE_BINARY_DIR}/snapbusConfigVersion.cmake
        DESTINATION ${SB_CMAKE_DIR})

# ---- Debian package ------------------------------------------------------
# The unit and configuration go to the system's places (/lib/systemd,
# /etc), the rest under the package's prefix, /usr: the unit's ExecStart
# names the packaged snapbusd. The configuration listens on loopback only.
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(SB_UNIT_IN ${CMAKE_SOURCE_DIR}/deploy/snapbusd.service)
set(SB_HOST_INI ${CMAKE_SOURCE_DIR}/deploy/snapbus-host.ini)
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${SB_UNIT_IN})
file(READ ${SB_UNIT_IN} _sb_unit)
string(REPLACE "/usr/local/bin/snapbusd"
       "${CPACK_PACKAGING_INSTALL_PREFIX}/${CMAKE_INSTALL_BINDIR}/snapbusd"
       _sb_unit "${_sb_unit}")
file(WRITE ${CMAKE_BINARY_DIR}/deploy/snapbusd.service "${_sb_unit}")
install(FILES ${CMAKE_BINARY_DIR}/deploy/snapbusd.service
        DESTINATION /lib/systemd/system COMPONENT deploy EXCLUDE_FROM_ALL)
install(FILES ${SB_HOST_INI} RENAME snapbus.ini
        DESTINATION /etc/snapbus COMPONENT deploy EXCLUDE_FROM_ALL)
configure_file(${CMAKE_SOURCE_DIR}/deploy/debian/postinst.in
               ${CMAKE_BINARY_DIR}/deploy/debian/postinst @ONLY)
configure_file(${CMAKE_SOURCE_DIR}/deploy/debian/prerm
               ${CMAKE_BINARY_DIR}/deploy/debian/prerm COPYONLY)
configure_file(${CMAKE_SOURCE_DIR}/deploy/debian/postrm
               ${CMAKE_BINARY_DIR}/deploy/debian/postrm COPYONLY)
file(WRITE ${CMAKE_BINARY_DIR}/deploy/debian/conffiles "/etc/snapbus/snapbus.ini\n")

set(CPACK_PACKAGE_NAME snapbus)
set(CPACK_PACKAGE_VERSION ${SB_VERSION})
set(CPACK_PACKAGE_CONTACT "snapbus maintainers <snapbus@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "event-bus broker with snapshot batches, its CLI and C client library")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
# One package with both components: the deploy files are left out of a
# plain `cmake --install` (they go to /etc and /lib/systemd, outside any
# prefix) and named here, where they belong.
set(CPACK_INSTALL_CMAKE_PROJECTS
    "${CMAKE_BINARY_DIR};snapbus;Unspecified;/"
    "${CMAKE_BINARY_DIR};snapbus;deploy;/")
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_BINARY_DIR}/deploy/debian/postinst
    ${CMAKE_BINARY_DIR}/deploy/debian/prerm
    ${CMAKE_BINARY_DIR}/deploy/debian/postrm
    ${CMAKE_BINARY_DIR}/deploy/debian/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
include(CPack)
