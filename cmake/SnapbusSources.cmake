# Source lists of every library and program, written out (nng's
# nng_sources() does the same): a file joins the build by being named
# here, in the layer it belongs to. Tests are found by their names
# (tests/unit/test_*.c, tests/integration/it_*.c, tests/fuzz/fuzz_*.c).

set(SB_COMMON_SRC
  ${CMAKE_SOURCE_DIR}/common/sb_err.c
  ${CMAKE_SOURCE_DIR}/common/sb_keys.c
  ${CMAKE_SOURCE_DIR}/common/sb_shard.c
  ${CMAKE_SOURCE_DIR}/common/sb_utf8.c)

# Broker services with no broker logic.
set(SB_BASE_SRC
  ${CMAKE_SOURCE_DIR}/broker/sb_clock.c
  ${CMAKE_SOURCE_DIR}/broker/sb_crc32c.c
  ${CMAKE_SOURCE_DIR}/broker/sb_log.c
  ${CMAKE_SOURCE_DIR}/broker/sb_map.c
  ${CMAKE_SOURCE_DIR}/broker/sb_msg.c
  ${CMAKE_SOURCE_DIR}/broker/sb_os.c)

# The on-disk log (sb_store.h; sb_store_int.h inside).
set(SB_STORE_SRC
  ${CMAKE_SOURCE_DIR}/broker/sb_store_format.c
  ${CMAKE_SOURCE_DIR}/broker/sb_store_reader.c
  ${CMAKE_SOURCE_DIR}/broker/sb_store_recovery.c
  ${CMAKE_SOURCE_DIR}/broker/sb_store_state.c
  ${CMAKE_SOURCE_DIR}/broker/sb_store_writer.c)

set(SB_WIRE_SRC
  ${CMAKE_SOURCE_DIR}/broker/sb_wire.c)

# Actors and the rest of the broker.
set(SB_CORE_SRC
  ${CMAKE_SOURCE_DIR}/broker/sb_actor.c
  ${CMAKE_SOURCE_DIR}/broker/sb_auth.c
  ${CMAKE_SOURCE_DIR}/broker/sb_config.c
  ${CMAKE_SOURCE_DIR}/broker/sb_dedup.c
  ${CMAKE_SOURCE_DIR}/broker/sb_fanout.c
  ${CMAKE_SOURCE_DIR}/broker/sb_ingest.c
  ${CMAKE_SOURCE_DIR}/broker/sb_link.c
  ${CMAKE_SOURCE_DIR}/broker/sb_logstore.c
  ${CMAKE_SOURCE_DIR}/broker/sb_metrics.c
  ${CMAKE_SOURCE_DIR}/broker/sb_router.c
  ${CMAKE_SOURCE_DIR}/broker/sb_sequencer.c
  ${CMAKE_SOURCE_DIR}/broker/sb_timelock.c
  ${CMAKE_SOURCE_DIR}/broker/sb_zmq.c)

set(SB_BROKER_MAIN ${CMAKE_SOURCE_DIR}/broker/main.c)

set(SB_CLIENT_SRC
  ${CMAKE_SOURCE_DIR}/clients/c/src/sb_fetch.c
  ${CMAKE_SOURCE_DIR}/clients/c/src/sb_publisher.c
  ${CMAKE_SOURCE_DIR}/clients/c/src/sb_snapshot.c
  ${CMAKE_SOURCE_DIR}/clients/c/src/sb_subscriber.c
  ${CMAKE_SOURCE_DIR}/clients/c/src/sbc_curve.c
  ${CMAKE_SOURCE_DIR}/clients/c/src/sbc_query.c
  ${CMAKE_SOURCE_DIR}/clients/c/src/sbc_sub.c
  ${CMAKE_SOURCE_DIR}/clients/c/src/sbc_util.c)

set(SB_CLI_SRC
  ${CMAKE_SOURCE_DIR}/clients/cli/cli_bench.c
  ${CMAKE_SOURCE_DIR}/clients/cli/cli_keys.c
  ${CMAKE_SOURCE_DIR}/clients/cli/cli_log.c
  ${CMAKE_SOURCE_DIR}/clients/cli/cli_pub.c
  ${CMAKE_SOURCE_DIR}/clients/cli/cli_record.c
  ${CMAKE_SOURCE_DIR}/clients/cli/cli_replay.c
  ${CMAKE_SOURCE_DIR}/clients/cli/cli_shard.c
  ${CMAKE_SOURCE_DIR}/clients/cli/cli_stat.c
  ${CMAKE_SOURCE_DIR}/clients/cli/cli_sub.c
  ${CMAKE_SOURCE_DIR}/clients/cli/cli_subscribe.c
  ${CMAKE_SOURCE_DIR}/clients/cli/main.c)

# A .c file in these folders that no list above names would silently go
# unbuilt (and its tests with it): refuse to configure instead.
set(_sb_listed ${SB_COMMON_SRC} ${SB_BASE_SRC} ${SB_STORE_SRC} ${SB_WIRE_SRC}
    ${SB_CORE_SRC} ${SB_BROKER_MAIN} ${SB_CLIENT_SRC} ${SB_CLI_SRC})
file(GLOB _sb_present CONFIGURE_DEPENDS
  ${CMAKE_SOURCE_DIR}/common/*.c ${CMAKE_SOURCE_DIR}/broker/*.c
  ${CMAKE_SOURCE_DIR}/clients/c/src/*.c ${CMAKE_SOURCE_DIR}/clients/cli/*.c)
set(_sb_unlisted)
foreach(f ${_sb_present})
  if(NOT f IN_LIST _sb_listed)
    file(RELATIVE_PATH rel ${CMAKE_SOURCE_DIR} ${f})
    list(APPEND _sb_unlisted ${rel})
  endif()
endforeach()
if(_sb_unlisted)
  message(FATAL_ERROR "Source files no library lists: ${_sb_unlisted}. "
    "Add each to its layer's list in cmake/SnapbusSources.cmake "
    "(broker services: SB_BASE_SRC; the log: SB_STORE_SRC; actors and the "
    "rest of the broker: SB_CORE_SRC; client library: SB_CLIENT_SRC; "
    "CLI: SB_CLI_SRC).")
endif()
