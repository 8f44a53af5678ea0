/* SipHash-1-3 (Aumasson and Bernstein), written from the paper's description, and a 64-bit mixer. */
#include "hash.h"

#include <string.h>

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static void sip_round(uint64_t v[4])
{
	v[0] += v[1]; v[1] = ROTL(v[1], 13); v[1] ^= v[0]; v[0] = ROTL(v[0], 32);
	v[2] += v[3]; v[3] = ROTL(v[3], 16); v[3] ^= v[2];
	v[0] += v[3]; v[3] = ROTL(v[3], 21); v[3] ^= v[0];
	v[2] += v[1]; v[1] = ROTL(v[1], 17); v[1] ^= v[2]; v[2] = ROTL(v[2], 32);
}

static uint64_t load_le64(const uint8_t *p)
{
	uint64_t x = 0;
	for(int i = 7; i >= 0; i--){
		x = (x << 8) | p[i];
	}
	return x;
}

uint64_t fo_hash(const struct fo_hash_key *key, const void *data, size_t length)
{
	const uint8_t *in = data;
	uint64_t v[4] = {
		key->k0 ^ 0x736f6d6570736575ULL, key->k1 ^ 0x646f72616e646f6dULL,
		key->k0 ^ 0x6c7967656e657261ULL, key->k1 ^ 0x7465646279746573ULL,
	};
	uint8_t tail[8] = {0};
	size_t full = length - (length % 8);
	uint64_t m;

	for(size_t i = 0; i < full; i += 8){
		m = load_le64(in + i);
		v[3] ^= m;
		sip_round(v);
		v[0] ^= m;
	}
	if(length % 8){
		memcpy(tail, in + full, length % 8);
	}
	tail[7] = (uint8_t)length;
	m = load_le64(tail);
	v[3] ^= m;
	sip_round(v);
	v[0] ^= m;
	v[2] ^= 0xff;
	sip_round(v);
	sip_round(v);
	sip_round(v);
	return v[0] ^ v[1] ^ v[2] ^ v[3];
}

uint64_t fo_hash_mix(uint64_t a, uint64_t b)
{
	/* the splitmix64 finalizer over the combination */
	uint64_t z = a ^ (b * 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}
