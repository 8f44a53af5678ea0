/* The plugin's one PostgreSQL connection (libpq): credential lookups, the service secret, and LISTEN for
 * device changes (docs/mosquitto.md#the-database-link).
 *
 * Everything is non-blocking except fo_pglink_lookup, which waits at most the lookup timeout (the broker's only
 * thread waits with it: a CONNECT is rare next to messages). The connection is (re)made from the tick, with a
 * backoff; its loss is reported (events.lost), because invalidations sent meanwhile are missed.
 */
#ifndef FLEETOPS_PGLINK_H
#define FLEETOPS_PGLINK_H

#include <stdbool.h>
#include <stdint.h>

#include "auth.h"

#define FO_NOTIFY_CHANNEL "fleetops_broker"

enum fo_lookup {
	FO_LOOKUP_FOUND,
	FO_LOOKUP_NOT_FOUND,
	FO_LOOKUP_UNAVAILABLE /* the database cannot be reached, or did not answer in time */
};

struct fo_credentials {
	char psk[FO_PSK_MAX_CHARS + 1];
	bool psk_valid; /* false for a stored value longer than any DevicePsk */
	bool enabled;
};

struct fo_pglink_events {
	void *context;
	void (*device_changed)(void *context, const char *client_id); /* enabled, psk changed, or deleted */
	void (*service_secret)(void *context, const char *secret);    /* read or re-read; NULL: no such row */
	void (*lost)(void *context);                                  /* the LISTEN session ended */
};

struct fo_pglink;

/* conninfo: a libpq URI or key=value string (it may hold a password: never logged). */
struct fo_pglink *fo_pglink_new(const char *conninfo, const char *service_name, int64_t lookup_timeout_ms,
		const struct fo_pglink_events *events);
void fo_pglink_free(struct fo_pglink *link);

/* Connect (and read the service secret) now, waiting until deadline_ms (monotonic) at most. */
bool fo_pglink_start(struct fo_pglink *link, int64_t deadline_ms);

/* Advance without blocking: connect, finish commands, deliver notifications. */
void fo_pglink_tick(struct fo_pglink *link);

enum fo_lookup fo_pglink_lookup(struct fo_pglink *link, const char *product_id, const char *device_name,
		struct fo_credentials *out);

bool fo_pglink_ready(const struct fo_pglink *link);

int64_t fo_monotonic_ms(void);

#endif
