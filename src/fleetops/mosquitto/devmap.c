/* The device table (devmap.h): open addressing with linear probing, backward-shift deletion. */
#include "devmap.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#define INITIAL_CAPACITY 1024

bool fo_devmap_init(struct fo_devmap *map, size_t idle_max, const struct fo_hash_key *key)
{
	memset(map, 0, sizeof(*map));
	map->slots = calloc(INITIAL_CAPACITY, sizeof(*map->slots));
	if(map->slots == NULL){
		return false;
	}
	map->capacity = INITIAL_CAPACITY;
	map->idle_max = idle_max;
	map->key = *key;
	return true;
}

static void free_entry(struct fo_device_entry *entry)
{
	OPENSSL_cleanse(entry->key, sizeof(entry->key)); /* a PSK-derived key does not outlive its use */
	free(entry);
}

void fo_devmap_destroy(struct fo_devmap *map)
{
	for(size_t i = 0; i < map->capacity; i++){
		if(map->slots[i] != NULL){
			free_entry(map->slots[i]);
		}
	}
	free(map->slots);
	memset(map, 0, sizeof(*map));
}

static size_t slot_of(const struct fo_devmap *map, const char *client_id, size_t length, uint64_t hash)
{
	size_t mask = map->capacity - 1;
	size_t i = (size_t)hash & mask;

	while(map->slots[i] != NULL){
		const struct fo_device_entry *entry = map->slots[i];
		if(entry->hash == hash && entry->client_id_length == length
				&& memcmp(entry->client_id, client_id, length) == 0){
			return i;
		}
		i = (i + 1) & mask;
	}
	return i;
}

struct fo_device_entry *fo_devmap_find(struct fo_devmap *map, const char *client_id)
{
	size_t length = strnlen(client_id, FO_DEVICE_ID_MAX + 1);

	if(length > FO_DEVICE_ID_MAX){
		return NULL;
	}
	return map->slots[slot_of(map, client_id, length, fo_hash(&map->key, client_id, length))];
}

static bool grow(struct fo_devmap *map)
{
	size_t capacity = map->capacity * 2;
	struct fo_device_entry **slots = calloc(capacity, sizeof(*slots));

	if(slots == NULL){
		return false;
	}
	for(size_t i = 0; i < map->capacity; i++){
		struct fo_device_entry *entry = map->slots[i];
		if(entry != NULL){
			size_t j = (size_t)entry->hash & (capacity - 1);
			while(slots[j] != NULL){
				j = (j + 1) & (capacity - 1);
			}
			slots[j] = entry;
		}
	}
	free(map->slots);
	map->slots = slots;
	map->capacity = capacity;
	return true;
}

struct fo_device_entry *fo_devmap_add(struct fo_devmap *map, const char *client_id)
{
	size_t length = strnlen(client_id, FO_DEVICE_ID_MAX + 1);
	uint64_t hash;
	size_t i;
	struct fo_device_entry *entry;

	if(length == 0 || length > FO_DEVICE_ID_MAX){
		return NULL;
	}
	hash = fo_hash(&map->key, client_id, length);
	i = slot_of(map, client_id, length, hash);
	if(map->slots[i] != NULL){
		return map->slots[i];
	}
	if(2 * (map->count + 1) > map->capacity){ /* keep the load at most 1/2: probes stay short */
		if(!grow(map)){
			return NULL;
		}
		i = slot_of(map, client_id, length, hash);
	}
	entry = calloc(1, sizeof(*entry));
	if(entry == NULL){
		return NULL;
	}
	entry->hash = hash;
	entry->client_id_length = (uint8_t)length;
	memcpy(entry->client_id, client_id, length);
	map->slots[i] = entry;
	map->count++;
	return entry;
}

static void remove_entry(struct fo_devmap *map, struct fo_device_entry *entry)
{
	size_t mask = map->capacity - 1;
	size_t i = slot_of(map, entry->client_id, entry->client_id_length, entry->hash);
	size_t j = i;

	map->slots[i] = NULL;
	/* Backward shift: move up every later entry of the run whose home slot is not in (i, j]. */
	for(;;){
		size_t home;
		j = (j + 1) & mask;
		if(map->slots[j] == NULL){
			break;
		}
		home = (size_t)map->slots[j]->hash & mask;
		if((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)){
			map->slots[i] = map->slots[j];
			map->slots[j] = NULL;
			i = j;
		}
	}
	map->count--;
	free_entry(entry);
}

static void unlink_idle(struct fo_devmap *map, struct fo_device_entry *entry)
{
	if(entry->idle_prev) entry->idle_prev->idle_next = entry->idle_next;
	else map->idle_head = entry->idle_next;
	if(entry->idle_next) entry->idle_next->idle_prev = entry->idle_prev;
	else map->idle_tail = entry->idle_prev;
	entry->idle_prev = entry->idle_next = NULL;
	entry->idle = false;
	map->idle_count--;
}

void fo_devmap_settle(struct fo_devmap *map, struct fo_device_entry *entry)
{
	if(entry->connection != NULL || entry->outstanding > 0){
		if(entry->idle){
			unlink_idle(map, entry);
		}
		return;
	}
	if(!entry->has_credentials){
		if(entry->idle){
			unlink_idle(map, entry);
		}
		remove_entry(map, entry);
		return;
	}
	if(!entry->idle){
		entry->idle = true;
		entry->idle_prev = map->idle_tail;
		entry->idle_next = NULL;
		if(map->idle_tail) map->idle_tail->idle_next = entry;
		else map->idle_head = entry;
		map->idle_tail = entry;
		map->idle_count++;
	}
	while(map->idle_count > map->idle_max){
		struct fo_device_entry *oldest = map->idle_head;
		unlink_idle(map, oldest);
		remove_entry(map, oldest);
	}
}

void fo_devmap_forget_credentials(struct fo_devmap *map)
{
	for(size_t i = 0; i < map->capacity; i++){
		if(map->slots[i] != NULL){
			map->slots[i]->has_credentials = false;
		}
	}
	/* Idle entries held nothing but credentials. */
	while(map->idle_head != NULL){
		struct fo_device_entry *entry = map->idle_head;
		unlink_idle(map, entry);
		remove_entry(map, entry);
	}
}
