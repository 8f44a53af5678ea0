/* Dispatch to handlers (dispatch.h). */
#include "dispatch.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define DROP_LOG_INTERVAL_MS 1000
#define TOPIC_BUFFER 400 /* $fleetops/node/ + 128 + /subscribed/ + 20 digits + / + 58 + / */

static const char *const KIND_NAMES[] = {"shadow", "presence", "subscribed"};

void fo_dispatch_init(struct fo_dispatch *dispatch, const struct fo_dispatch_limits *limits,
		struct fo_devmap *devices, const struct fo_hash_key *key, fo_publish_fn publish, uint64_t first_seq)
{
	memset(dispatch, 0, sizeof(*dispatch));
	dispatch->limits = *limits;
	dispatch->devices = devices;
	dispatch->key = *key;
	dispatch->publish = publish;
	dispatch->next_seq = first_seq ? first_seq : 1;
	dispatch->next_handler_id = 1;
}

static void free_queue(struct fo_queue *queue)
{
	struct fo_message *message = queue->head;
	while(message != NULL){
		struct fo_message *next = message->next;
		free(message);
		message = next;
	}
	memset(queue, 0, sizeof(*queue));
}

void fo_dispatch_destroy(struct fo_dispatch *dispatch)
{
	for(size_t i = 0; i < dispatch->handler_count; i++){
		free_queue(&dispatch->handlers[i].queue);
	}
	free_queue(&dispatch->pending);
	dispatch->handler_count = 0;
}

bool fo_handler_id_valid(const char *client_id)
{
	size_t length = strnlen(client_id, FO_HANDLER_ID_MAX + 1);
	return length > 0 && length <= FO_HANDLER_ID_MAX && strpbrk(client_id, "/+#") == NULL;
}

static struct fo_handler *find_handler(struct fo_dispatch *dispatch, const char *client_id)
{
	for(size_t i = 0; i < dispatch->handler_count; i++){
		if(strcmp(dispatch->handlers[i].client_id, client_id) == 0){
			return &dispatch->handlers[i];
		}
	}
	return NULL;
}

bool fo_dispatch_is_handler(const struct fo_dispatch *dispatch, const char *client_id, const void *connection)
{
	for(size_t i = 0; i < dispatch->handler_count; i++){
		if(dispatch->handlers[i].connection == connection && strcmp(dispatch->handlers[i].client_id, client_id) == 0){
			return true;
		}
	}
	return false;
}

static size_t message_size(const struct fo_message *message)
{
	return sizeof(*message) + message->payload_length;
}

static struct fo_message *pop_head(struct fo_queue *queue)
{
	struct fo_message *message = queue->head;

	queue->head = message->next;
	if(queue->head == NULL){
		queue->tail = NULL;
	}
	if(queue->unsent == message){
		queue->unsent = message->next;
	}else{
		queue->in_flight--; /* everything before `unsent` was sent */
	}
	queue->count--;
	queue->bytes -= message_size(message);
	message->next = NULL;
	return message;
}

/* A message leaves a handler's queue (done, or dropped): the device has one outstanding message less. */
static void release(struct fo_dispatch *dispatch, struct fo_message *message)
{
	struct fo_device_entry *entry = fo_devmap_find(dispatch->devices, message->device);

	if(entry != NULL && entry->outstanding > 0){
		entry->outstanding--;
		fo_devmap_settle(dispatch->devices, entry);
	}
	free(message);
}

/* Append, dropping the oldest messages while the queue would exceed its bounds. */
static void append(struct fo_dispatch *dispatch, struct fo_queue *queue, struct fo_message *message, bool counted)
{
	while(queue->head != NULL && (queue->count + 1 > dispatch->limits.queue_max_messages
				|| queue->bytes + message_size(message) > dispatch->limits.queue_max_bytes)){
		bool sent = queue->head != queue->unsent;
		struct fo_message *oldest = pop_head(queue);

		if(sent){
			/* Still in the node's hands: it keeps its place in the window until an ack covers it, so a node
			 * that does not acknowledge is not sent more than the window. */
			queue->in_flight++;
			queue->dropped_sent++;
			queue->dropped_sent_seq = oldest->seq > queue->dropped_sent_seq ? oldest->seq : queue->dropped_sent_seq;
		}
		dispatch->dropped_full++;
		if(counted){
			release(dispatch, oldest);
		}else{
			free(oldest);
		}
	}
	message->next = NULL;
	if(queue->tail != NULL){
		queue->tail->next = message;
	}else{
		queue->head = message;
	}
	queue->tail = message;
	if(queue->unsent == NULL){
		queue->unsent = message;
	}
	queue->count++;
	queue->bytes += message_size(message);
}

/* The handler already holding this device's messages, else the rendezvous winner; NULL without handlers. */
static struct fo_handler *choose(struct fo_dispatch *dispatch, const struct fo_device_entry *entry,
		const char *device, size_t length)
{
	struct fo_handler *best = NULL;
	uint64_t best_score = 0;
	uint64_t device_hash;

	if(entry != NULL && entry->outstanding > 0){
		for(size_t i = 0; i < dispatch->handler_count; i++){
			if(dispatch->handlers[i].id == entry->handler_id){
				return &dispatch->handlers[i];
			}
		}
	}
	device_hash = fo_hash(&dispatch->key, device, length);
	for(size_t i = 0; i < dispatch->handler_count; i++){
		uint64_t score = fo_hash_mix(device_hash, dispatch->handlers[i].hash);
		if(best == NULL || score > best_score){
			best = &dispatch->handlers[i];
			best_score = score;
		}
	}
	return best;
}

static void route(struct fo_dispatch *dispatch, struct fo_message *message)
{
	struct fo_device_entry *entry = fo_devmap_find(dispatch->devices, message->device);
	struct fo_handler *handler = choose(dispatch, entry, message->device, message->device_length);

	message->seq = 0;
	if(handler == NULL){
		if(entry != NULL){
			fo_devmap_settle(dispatch->devices, entry); /* unregister() took its count back */
		}
		append(dispatch, &dispatch->pending, message, false);
		return;
	}
	if(entry == NULL){
		entry = fo_devmap_add(dispatch->devices, message->device);
	}
	if(entry != NULL){
		entry->handler_id = handler->id;
		entry->outstanding++;
		fo_devmap_settle(dispatch->devices, entry); /* no longer idle */
	}
	append(dispatch, &handler->queue, message, entry != NULL);
}

static void pump(struct fo_dispatch *dispatch, struct fo_handler *handler)
{
	struct fo_queue *queue = &handler->queue;

	while(queue->unsent != NULL && queue->in_flight < dispatch->limits.window){
		struct fo_message *message = queue->unsent;
		char topic[TOPIC_BUFFER];

		message->seq = dispatch->next_seq++;
		snprintf(topic, sizeof(topic), "$fleetops/node/%s/%s/%" PRIu64 "/%.*s/%s", handler->client_id,
				KIND_NAMES[message->kind], message->seq, FO_PRODUCT_ID_LENGTH, message->device,
				message->device + FO_PRODUCT_ID_LENGTH);
		if(dispatch->publish(handler->client_id, topic, message->payload, message->payload_length) != 0){
			message->seq = 0; /* out of memory in the broker: try again at the next tick */
			return;
		}
		queue->unsent = message->next;
		queue->in_flight++;
	}
}

static void pump_all(struct fo_dispatch *dispatch)
{
	for(size_t i = 0; i < dispatch->handler_count; i++){
		pump(dispatch, &dispatch->handlers[i]);
	}
}

bool fo_dispatch_submit(struct fo_dispatch *dispatch, enum fo_kind kind, const char *device,
		const void *payload, uint32_t length, int64_t now_ms)
{
	size_t device_length = strnlen(device, FO_DEVICE_ID_MAX + 1);
	struct fo_message *message;

	if(device_length <= FO_PRODUCT_ID_LENGTH || device_length > FO_DEVICE_ID_MAX){
		return false;
	}
	message = malloc(sizeof(*message) + length);
	if(message == NULL){
		fo_log(MOSQ_LOG_ERR, "out of memory: a %s message of %s is lost", KIND_NAMES[kind], device);
		return false;
	}
	memset(message, 0, sizeof(*message));
	message->kind = (uint8_t)kind;
	message->queued_ms = now_ms;
	message->payload_length = length;
	message->device_length = (uint8_t)device_length;
	memcpy(message->device, device, device_length);
	if(length > 0){
		memcpy(message->payload, payload, length);
	}
	route(dispatch, message);
	pump_all(dispatch);
	return true;
}

bool fo_dispatch_register(struct fo_dispatch *dispatch, const char *client_id, const void *connection)
{
	struct fo_handler *handler;
	struct fo_message *message;
	size_t moved = 0;

	if(!fo_handler_id_valid(client_id)){
		fo_log(MOSQ_LOG_WARNING, "node %.64s cannot be a handler: its client id must be one topic level of at most "
				"%d bytes without + or #", client_id, FO_HANDLER_ID_MAX);
		return false;
	}
	handler = find_handler(dispatch, client_id);
	if(handler != NULL && handler->connection == connection){
		return true;
	}
	if(handler != NULL){
		fo_dispatch_unregister(dispatch, client_id, handler->connection, "replaced by a new connection");
	}
	if(dispatch->handler_count == FO_HANDLERS_MAX){
		fo_log(MOSQ_LOG_WARNING, "node %s is not a handler: %d nodes already are", client_id, FO_HANDLERS_MAX);
		return false;
	}
	handler = &dispatch->handlers[dispatch->handler_count++];
	memset(handler, 0, sizeof(*handler));
	handler->client_id_length = strlen(client_id);
	memcpy(handler->client_id, client_id, handler->client_id_length + 1);
	handler->connection = connection;
	handler->id = dispatch->next_handler_id++;
	handler->hash = fo_hash(&dispatch->key, client_id, handler->client_id_length);
	while(dispatch->pending.head != NULL){
		message = pop_head(&dispatch->pending);
		route(dispatch, message);
		moved++;
	}
	fo_log(MOSQ_LOG_NOTICE, "node %s handles device messages (%zu nodes)%s", client_id, dispatch->handler_count,
			moved ? "; pending messages handed over" : "");
	pump_all(dispatch);
	return true;
}

void fo_dispatch_unregister(struct fo_dispatch *dispatch, const char *client_id, const void *connection,
		const char *why)
{
	struct fo_handler *handler = find_handler(dispatch, client_id);
	struct fo_queue queue;
	size_t index;

	if(handler == NULL || handler->connection != connection){
		return;
	}
	queue = handler->queue;
	index = (size_t)(handler - dispatch->handlers);
	dispatch->handlers[index] = dispatch->handlers[dispatch->handler_count - 1];
	dispatch->handler_count--;
	fo_log(MOSQ_LOG_NOTICE, "node %s no longer handles device messages (%s); %zu unacknowledged messages go to "
			"%s", client_id, why, queue.count, dispatch->handler_count ? "the other nodes" : "the pending queue");
	/* In order: each device's messages keep their order at their new handler. */
	while(queue.head != NULL){
		struct fo_message *message = pop_head(&queue);
		struct fo_device_entry *entry = fo_devmap_find(dispatch->devices, message->device);
		if(entry != NULL && entry->outstanding > 0){
			entry->outstanding--; /* counted again by route(); no settle in between, the entry stays */
		}
		route(dispatch, message);
	}
	pump_all(dispatch);
}

void fo_dispatch_ack(struct fo_dispatch *dispatch, const char *client_id, const void *connection, uint64_t seq)
{
	struct fo_handler *handler = find_handler(dispatch, client_id);
	struct fo_queue *queue;

	if(handler == NULL || handler->connection != connection){
		return;
	}
	queue = &handler->queue;
	while(queue->head != NULL && queue->head != queue->unsent && queue->head->seq <= seq){
		release(dispatch, pop_head(queue));
	}
	if(queue->dropped_sent > 0 && seq >= queue->dropped_sent_seq){
		queue->in_flight -= queue->dropped_sent;
		queue->dropped_sent = 0;
	}
	pump(dispatch, handler);
}

void fo_dispatch_tick(struct fo_dispatch *dispatch, int64_t now_ms)
{
	while(dispatch->pending.head != NULL
			&& now_ms - dispatch->pending.head->queued_ms > dispatch->limits.pending_max_age_ms){
		free(pop_head(&dispatch->pending));
		dispatch->dropped_old++;
	}
	pump_all(dispatch);
	if((dispatch->dropped_full || dispatch->dropped_old) && now_ms - dispatch->drops_logged_ms >= DROP_LOG_INTERVAL_MS){
		fo_log(MOSQ_LOG_WARNING, "dropped %zu device messages (queue full: at most %zu messages / %zu bytes) and %zu "
				"that waited over %lld ms for a node", dispatch->dropped_full, dispatch->limits.queue_max_messages,
				dispatch->limits.queue_max_bytes, dispatch->dropped_old,
				(long long)dispatch->limits.pending_max_age_ms);
		dispatch->dropped_full = dispatch->dropped_old = 0;
		dispatch->drops_logged_ms = now_ms;
	}
}
