/* What the plugin knows per device, keyed by client id: its cached credentials, its current connection and
 * where its dispatched messages wait (docs/mosquitto.md#what-the-plugin-keeps).
 *
 * An entry lives while the device is connected or has messages waiting at a node; after that it stays as a
 * cached credential, and those idle entries are evicted least recently used first beyond a bound.
 */
#ifndef FLEETOPS_DEVMAP_H
#define FLEETOPS_DEVMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "fleetops_limits.h"
#include "hash.h"

#define FO_DEVICE_ID_MAX (FO_PRODUCT_ID_LENGTH + FO_DEVICE_NAME_MAX_LENGTH)

struct fo_device_entry {
	struct fo_device_entry *idle_prev, *idle_next;
	uint64_t hash;
	const void *connection; /* the struct mosquitto of the device's current connection; NULL when offline */
	uint64_t handler_id;    /* the node holding this device's outstanding messages */
	uint32_t outstanding;   /* messages of this device waiting at that node */
	bool idle;
	bool has_credentials;
	bool enabled;
	uint8_t key_length;
	uint8_t key[FO_KEY_MAX_BYTES];
	uint8_t client_id_length;
	char client_id[FO_DEVICE_ID_MAX + 1];
};

struct fo_devmap {
	struct fo_device_entry **slots;
	size_t capacity; /* a power of two */
	size_t count;
	struct fo_device_entry *idle_head, *idle_tail;
	size_t idle_count;
	size_t idle_max;
	struct fo_hash_key key;
};

bool fo_devmap_init(struct fo_devmap *map, size_t idle_max, const struct fo_hash_key *key);
void fo_devmap_destroy(struct fo_devmap *map);

struct fo_device_entry *fo_devmap_find(struct fo_devmap *map, const char *client_id);

/* The entry of client_id, added if new; NULL if out of memory or client_id is longer than a device's. */
struct fo_device_entry *fo_devmap_add(struct fo_devmap *map, const char *client_id);

/* Call after changing an entry: it becomes idle, leaves the idle list, or is freed. The entry (or another idle
 * one) may be freed: do not use it afterwards. */
void fo_devmap_settle(struct fo_devmap *map, struct fo_device_entry *entry);

/* Drop every cached credential (the invalidation channel was lost); entries in use stay. */
void fo_devmap_forget_credentials(struct fo_devmap *map);

#endif
