/* A keyed 64-bit hash (SipHash-1-3) for the device table and rendezvous hashing.
 *
 * Keyed with random bytes at plugin start: device names are chosen by API users, and an unkeyed hash would
 * let one of them fill a table bucket on purpose.
 */
#ifndef FLEETOPS_HASH_H
#define FLEETOPS_HASH_H

#include <stddef.h>
#include <stdint.h>

struct fo_hash_key {
	uint64_t k0, k1;
};

uint64_t fo_hash(const struct fo_hash_key *key, const void *data, size_t length);

/* Mix two hashes into a well-spread score (rendezvous hashing: device x node). */
uint64_t fo_hash_mix(uint64_t a, uint64_t b);

#endif
