/* Device authentication (auth.h). */
#include "auth.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#define USERNAME_FIELDS 4
#define EXPIRY_MAX_DIGITS 20 /* as [0-9]{1,20} of device_auth.UserName.parse */

static bool ascii_equals_ignore_case(const char *a, const char *b)
{
	for(; *a && *b; a++, b++){
		char x = (*a >= 'A' && *a <= 'Z') ? (char)(*a - 'A' + 'a') : *a;
		char y = (*b >= 'A' && *b <= 'Z') ? (char)(*b - 'A' + 'a') : *b;
		if(x != y){
			return false;
		}
	}
	return *a == *b;
}

enum fo_username_check fo_check_username(const char *username, const char *client_id, int64_t now_s)
{
	const char *field[USERNAME_FIELDS];
	size_t length[USERNAME_FIELDS];
	const char *start = username;
	int count = 0;
	uint64_t expiry = 0;

	if(username == NULL || client_id == NULL){
		return FO_USERNAME_MALFORMED;
	}
	for(const char *p = username; ; p++){
		if(*p == ';' || *p == '\0'){
			if(count == USERNAME_FIELDS){
				return FO_USERNAME_MALFORMED; /* a fifth field */
			}
			field[count] = start;
			length[count] = (size_t)(p - start);
			count++;
			if(*p == '\0'){
				break;
			}
			start = p + 1;
		}
	}
	if(count != USERNAME_FIELDS || length[1] == 0 || length[3] == 0 || length[3] > EXPIRY_MAX_DIGITS){
		return FO_USERNAME_MALFORMED;
	}
	if(length[0] != strlen(client_id) || memcmp(field[0], client_id, length[0]) != 0){
		return FO_USERNAME_MALFORMED;
	}
	for(size_t i = 0; i < length[3]; i++){
		unsigned digit = (unsigned char)field[3][i] - (unsigned)'0';
		if(digit > 9){
			return FO_USERNAME_MALFORMED;
		}
		/* 20 digits can exceed 2^64: saturate, such an expiry is far in the future anyway */
		expiry = (expiry > (UINT64_MAX - digit) / 10) ? UINT64_MAX : expiry * 10 + digit;
	}
	if(now_s > 0 && expiry < (uint64_t)now_s){
		return FO_USERNAME_EXPIRED;
	}
	return FO_USERNAME_OK;
}

bool fo_check_password(const char *username, const char *password, const uint8_t *key, size_t key_length)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int mac_length = 0;
	char expected[2 * EVP_MAX_MD_SIZE];
	char given[2 * EVP_MAX_MD_SIZE];
	const EVP_MD *digest;
	const char *separator;
	size_t token_length;

	if(username == NULL || password == NULL || key_length > FO_KEY_MAX_BYTES){
		return false;
	}
	separator = strrchr(password, ';');
	if(separator == NULL){
		return false;
	}
	if(ascii_equals_ignore_case(separator + 1, "hmacsha256")){
		digest = EVP_sha256();
	}else if(ascii_equals_ignore_case(separator + 1, "hmacsha1")){
		digest = EVP_sha1();
	}else{
		return false;
	}
	token_length = (size_t)(separator - password);
	if(token_length != 2 * (size_t)EVP_MD_size(digest)){
		return false;
	}
	if(HMAC(digest, key_length ? key : (const uint8_t *)"", (int)key_length, (const unsigned char *)username,
				strlen(username), mac, &mac_length) == NULL || 2 * (size_t)mac_length != token_length){
		return false;
	}
	for(unsigned int i = 0; i < mac_length; i++){
		expected[2 * i] = hex[mac[i] >> 4];
		expected[2 * i + 1] = hex[mac[i] & 0x0f];
	}
	for(size_t i = 0; i < token_length; i++){
		char c = password[i];
		given[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
	}
	return CRYPTO_memcmp(given, expected, token_length) == 0;
}

static int base64_value(char c)
{
	if(c >= 'A' && c <= 'Z') return c - 'A';
	if(c >= 'a' && c <= 'z') return c - 'a' + 26;
	if(c >= '0' && c <= '9') return c - '0' + 52;
	if(c == '+') return 62;
	if(c == '/') return 63;
	return -1;
}

/* CPython's strict a2b_base64 (Python 3.11, what b64decode(validate=True) runs): no leading padding, no
 * data after padding, a partial quantum must be closed by its padding; padding after a full quantum is
 * ignored; the unused bits of the last character are not checked. */
bool fo_base64_decode(const char *text, uint8_t *out, size_t capacity, size_t *out_length)
{
	unsigned quad_position = 0, pads = 0;
	unsigned left = 0;
	bool padding_started = false;
	size_t written = 0;
	size_t length;

	if(text == NULL){
		return false;
	}
	length = strlen(text);
	for(size_t i = 0; i < length; i++){
		int value;

		if(text[i] == '='){
			if(i == 0){
				return false; /* leading padding */
			}
			padding_started = true;
			if(quad_position >= 2 && quad_position + ++pads >= 4){
				if(i + 1 < length){
					return false; /* excess data after padding */
				}
				*out_length = written;
				return true;
			}
			continue;
		}
		value = base64_value(text[i]);
		if(value < 0 || padding_started){
			return false; /* not base64, or discontinuous padding */
		}
		pads = 0;
		switch(quad_position){
			case 0:
				left = (unsigned)value;
				quad_position = 1;
				break;
			case 1:
				if(written == capacity) return false;
				out[written++] = (uint8_t)((left << 2) | ((unsigned)value >> 4));
				left = (unsigned)value & 0x0f;
				quad_position = 2;
				break;
			case 2:
				if(written == capacity) return false;
				out[written++] = (uint8_t)((left << 4) | ((unsigned)value >> 2));
				left = (unsigned)value & 0x03;
				quad_position = 3;
				break;
			default:
				if(written == capacity) return false;
				out[written++] = (uint8_t)((left << 6) | (unsigned)value);
				quad_position = 0;
				break;
		}
	}
	if(quad_position != 0){
		return false; /* incorrect padding */
	}
	*out_length = written;
	return true;
}

bool fo_secret_equals(const char *given, const char *expected)
{
	size_t length;

	if(given == NULL || expected == NULL){
		return false;
	}
	length = strlen(expected);
	if(length == 0 || strlen(given) != length){
		return false;
	}
	return CRYPTO_memcmp(given, expected, length) == 0;
}
