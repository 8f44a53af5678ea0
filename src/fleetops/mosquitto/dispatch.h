/* Device messages for the fleetops nodes, each handed to exactly one node (docs/mosquitto.md#dispatch).
 *
 * Mosquitto never delivers a "$" topic to a shared subscription, so the plugin picks the node itself: a node
 * (a "handler") registers by subscribing $fleetops/node/<its client id>/#; each device's messages go to the
 * handler that wins rendezvous hashing of the device's client id, or stay with the handler that still holds
 * earlier ones of that device, so a device's messages keep their order. A message is kept until the handler
 * acknowledges it; a handler that goes away has its messages handed, in order, to the others. With no
 * handler, messages wait in a pending queue. Every queue is bounded in messages and bytes (oldest dropped, and
 * logged) and the pending queue also in age.
 */
#ifndef FLEETOPS_DISPATCH_H
#define FLEETOPS_DISPATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "devmap.h"
#include "hash.h"

#define FO_HANDLERS_MAX 64
#define FO_HANDLER_ID_MAX 128

enum fo_kind { FO_KIND_SHADOW, FO_KIND_PRESENCE, FO_KIND_SUBSCRIBED };

struct fo_message {
	struct fo_message *next;
	uint64_t seq; /* assigned when sent to a handler; 0 while not sent */
	int64_t queued_ms;
	uint32_t payload_length;
	uint8_t kind;
	uint8_t device_length;
	char device[FO_DEVICE_ID_MAX + 1];
	uint8_t payload[];
};

/* Oldest first: the sent, unacknowledged messages, then (from `unsent`) the ones not sent yet. */
struct fo_queue {
	struct fo_message *head, *tail, *unsent;
	size_t count, bytes;
	size_t in_flight; /* sent and unacknowledged, including `dropped_sent` */
	size_t dropped_sent;   /* sent messages dropped from a full queue: the node still holds them until it acks */
	uint64_t dropped_sent_seq; /* the highest of their seqs */
};

struct fo_handler {
	char client_id[FO_HANDLER_ID_MAX + 1];
	size_t client_id_length;
	const void *connection; /* the struct mosquitto that registered */
	uint64_t id;            /* unique per registration */
	uint64_t hash;
	struct fo_queue queue;
};

struct fo_dispatch_limits {
	size_t queue_max_messages; /* per handler, and for the pending queue */
	size_t queue_max_bytes;
	size_t window; /* sent and unacknowledged messages per handler */
	int64_t pending_max_age_ms;
};

/* Send one message to one client (mosquitto_broker_publish_copy); 0 on success. */
typedef int (*fo_publish_fn)(const char *client_id, const char *topic, const void *payload, uint32_t length);

struct fo_dispatch {
	struct fo_handler handlers[FO_HANDLERS_MAX];
	size_t handler_count;
	struct fo_queue pending;
	uint64_t next_seq;
	uint64_t next_handler_id;
	struct fo_dispatch_limits limits;
	struct fo_devmap *devices;
	struct fo_hash_key key;
	fo_publish_fn publish;
	size_t dropped_full, dropped_old;
	int64_t drops_logged_ms;
};

void fo_dispatch_init(struct fo_dispatch *dispatch, const struct fo_dispatch_limits *limits,
		struct fo_devmap *devices, const struct fo_hash_key *key, fo_publish_fn publish, uint64_t first_seq);
void fo_dispatch_destroy(struct fo_dispatch *dispatch);

/* A client id usable in $fleetops/node/<id>/...: one topic level, no wildcard, at most FO_HANDLER_ID_MAX bytes. */
bool fo_handler_id_valid(const char *client_id);

/* Queue a message of a device (its client id) for a handler; false if out of memory (the message is lost). */
bool fo_dispatch_submit(struct fo_dispatch *dispatch, enum fo_kind kind, const char *device,
		const void *payload, uint32_t length, int64_t now_ms);

bool fo_dispatch_register(struct fo_dispatch *dispatch, const char *client_id, const void *connection);

/* Only the registration made by `connection` (a take-over's old connection leaves the new one alone). */
void fo_dispatch_unregister(struct fo_dispatch *dispatch, const char *client_id, const void *connection,
		const char *why);

/* The handler has done everything it was given up to seq. */
void fo_dispatch_ack(struct fo_dispatch *dispatch, const char *client_id, const void *connection, uint64_t seq);

bool fo_dispatch_is_handler(const struct fo_dispatch *dispatch, const char *client_id, const void *connection);

void fo_dispatch_tick(struct fo_dispatch *dispatch, int64_t now_ms);

#endif
