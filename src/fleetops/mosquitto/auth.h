/* Device authentication at CONNECT, the rules of fleetops.messaging.device_auth (docs/mqtt.md#connecting).
 *
 * Pure functions over NUL-terminated strings (Mosquitto hands the plugin C strings; MQTT strings cannot hold
 * NUL, passwords are binary and Mosquitto cuts them at the first NUL: docs/mosquitto.md#differences-from-the-embedded-broker).
 */
#ifndef FLEETOPS_AUTH_H
#define FLEETOPS_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest DevicePsk is 128 Base64 characters (CreateDevice DefinedPsk), 96 bytes of key. */
#define FO_PSK_MAX_CHARS 128
#define FO_KEY_MAX_BYTES 96

enum fo_username_check {
	FO_USERNAME_OK = 0,
	FO_USERNAME_MALFORMED, /* not ${clientId};${sdkappid};${connid};${expiry} for this client id */
	FO_USERNAME_EXPIRED    /* expiry < now: only that is refused, LONG_MAX and milliseconds are fine */
};

enum fo_username_check fo_check_username(const char *username, const char *client_id, int64_t now_s);

/* Whether password is ${hex HMAC(key, username)};hmacsha256|hmacsha1 (method after the last ';', any case;
 * token compared case-insensitively in constant time). */
bool fo_check_password(const char *username, const char *password, const uint8_t *key, size_t key_length);

/* Base64 as Python's base64.b64decode(text, validate=True) accepts it (CreateDevice stores what that accepts);
 * false for anything it refuses or a key longer than capacity. */
bool fo_base64_decode(const char *text, uint8_t *out, size_t capacity, size_t *out_length);

/* Constant-time equality of two secrets of the same length (the length itself is not secret). */
bool fo_secret_equals(const char *given, const char *expected);

#endif
