/* One log line through Mosquitto's log, prefixed "fleetops: ". Never log a secret (a PSK, a password, the
 * database URL): callers pass ids, addresses and causes only. */
#ifndef FLEETOPS_LOG_H
#define FLEETOPS_LOG_H

#include <mosquitto.h> /* MOSQ_LOG_* */

void fo_log(int level, const char *format, ...) __attribute__((format(printf, 2, 3)));

#endif
