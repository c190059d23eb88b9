# Source lists of every library and program, written out (nng's
# nng_sources() does the same): a file joins the build by being named
# here, in the layer it belongs to. Tests are found by their names
# (tests/unit/test_*.c, tests/integration/it_*.c, tests/fuzz/fuzz_*.c).

# sb_sources(VAR DIR file...): VAR = the files, as paths under DIR.
function(sb_sources var dir)
  set(out)
  foreach(f ${ARGN})
    list(APPEND out ${CMAKE_SOURCE_DIR}/${dir}/${f})
  endforeach()
  set(${var} ${out} PARENT_SCOPE)
endfunction()

sb_sources(SB_COMMON_SRC common sb_err.c sb_keys.c sb_shard.c sb_utf8.c)

# Broker services with no broker logic.
sb_sources(SB_BASE_SRC broker sb_clock.c sb_crc32c.c sb_hist.c sb_link.c
  sb_log.c sb_map.c sb_msg.c sb_os.c)

# The on-disk log (sb_store.h; sb_store_int.h inside).
sb_sources(SB_STORE_SRC broker sb_store_format.c sb_store_reader.c
  sb_store_recovery.c sb_store_state.c sb_store_writer.c)

sb_sources(SB_WIRE_SRC broker sb_wire.c)

# Actors and the rest of the broker.
sb_sources(SB_CORE_SRC broker sb_actor.c sb_auth.c sb_budget.c sb_config.c
  sb_dedup.c sb_fanout.c sb_ingest.c sb_logstore.c sb_metrics.c sb_router.c
  sb_sequencer.c sb_timelock.c sb_zmq.c)

set(SB_BROKER_MAIN ${CMAKE_SOURCE_DIR}/broker/main.c)

sb_sources(SB_CLIENT_SRC clients/c/src sb_fetch.c sb_publisher.c sb_snapshot.c
  sb_subscriber.c sbc_curve.c sbc_query.c sbc_sub.c sbc_util.c)

sb_sources(SB_CLI_SRC clients/cli cli_bench.c cli_bench_base.c
  cli_bench_broker.c cli_keys.c cli_log.c cli_pub.c cli_record.c cli_replay.c
  cli_shard.c cli_stat.c cli_sub.c cli_subscribe.c main.c)

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
