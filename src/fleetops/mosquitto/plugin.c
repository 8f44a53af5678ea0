/* The fleetops Mosquitto plugin (plugin API version 5, Mosquitto 2.0): device authentication, the device ACL,
 * and device messages handed to exactly one fleetops node. What it does and why: docs/mosquitto.md.
 *
 * Mosquitto runs every callback on its one thread; nothing here blocks except the bounded credential lookup
 * of a CONNECT whose device is not cached (pglink.h).
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <openssl/crypto.h>

#include "acl.h"
#include "auth.h"
#include "devmap.h"
#include "dispatch.h"
#include "fleetops_limits.h"
#include "log.h"
#include "pglink.h"

#define FO_PROTOCOL_VERSION 1   /* of the $fleetops/... messages (docs/mosquitto.md#the-node-protocol) */
#define TICK_INTERVAL_MS 10      /* Mosquitto ticks on every loop pass (at least every 100 ms); we act at most this often */
#define SERVICE_USER_MAX 64
#define JSON_BUFFER 2048

#define FO_XSTR(x) #x
#define FO_STR(x) FO_XSTR(x)
/* Built with -fvisibility=hidden: only the entry points Mosquitto looks up are exported. */
#define FO_EXPORT __attribute__((visibility("default")))

#define NODE_PREFIX "$fleetops/node/"
#define ACK_PREFIX "$fleetops/ack/"
#define HELLO_PREFIX "$fleetops/hello/"
#define SHADOW_REQUEST_PREFIX "$shadow/operation/"

struct fo_plugin {
	mosquitto_plugin_id_t *identifier;
	char service_user[SERVICE_USER_MAX + 1];
	char *service_secret; /* NULL until read from broker_credentials */
	struct fo_pglink *link;
	struct fo_devmap devices;
	struct fo_dispatch dispatch;
	char boot_id[17];
	int64_t last_tick_ms;
	bool callbacks_registered;
};

/* --- small helpers ------------------------------------------------------------------------------------ */

struct text {
	char data[JSON_BUFFER];
	size_t length;
	bool overflow;
};

static void text_add(struct text *text, const char *chunk, size_t length)
{
	if(text->overflow || length >= sizeof(text->data) - text->length){
		text->overflow = true;
		return;
	}
	memcpy(text->data + text->length, chunk, length);
	text->length += length;
	text->data[text->length] = '\0';
}

static void text_addf(struct text *text, const char *format, ...) __attribute__((format(printf, 2, 3)));
static void text_addf(struct text *text, const char *format, ...)
{
	char chunk[128];
	va_list args;
	int length;

	va_start(args, format);
	length = vsnprintf(chunk, sizeof(chunk), format, args);
	va_end(args);
	if(length < 0 || (size_t)length >= sizeof(chunk)){
		text->overflow = true;
		return;
	}
	text_add(text, chunk, (size_t)length);
}

/* A JSON string (RFC 8259): quotes, backslashes and control characters escaped; UTF-8 passes through. */
static void text_add_json(struct text *text, const char *value)
{
	text_add(text, "\"", 1);
	for(const unsigned char *p = (const unsigned char *)(value ? value : ""); *p; p++){
		if(*p == '"' || *p == '\\'){
			char escaped[2] = {'\\', (char)*p};
			text_add(text, escaped, 2);
		}else if(*p < 0x20){
			text_addf(text, "\\u%04x", *p);
		}else{
			text_add(text, (const char *)p, 1);
		}
	}
	text_add(text, "\"", 1);
}

static int64_t realtime_ms(void)
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static bool is_service(const struct fo_plugin *plugin, const struct mosquitto *client)
{
	/* A device can never hold this user name: BASIC_AUTH takes it as the service identity. */
	const char *username = mosquitto_client_username(client);
	return username != NULL && strcmp(username, plugin->service_user) == 0;
}

/* topic == prefix + client_id + suffix */
static bool topic_is(const char *topic, const char *prefix, const char *client_id, const char *suffix)
{
	size_t prefix_length = strlen(prefix), id_length = strlen(client_id);
	return strncmp(topic, prefix, prefix_length) == 0 && strncmp(topic + prefix_length, client_id, id_length) == 0
		&& strcmp(topic + prefix_length + id_length, suffix) == 0;
}

/* --- dispatch ------------------------------------------------------------------------------------------ */

static int publish_to(const char *client_id, const char *topic, const void *payload, uint32_t length)
{
	/* QoS 1 to that client alone (no subscription needed); at most `window` of them unacknowledged. */
	return mosquitto_broker_publish_copy(client_id, topic, (int)length, payload, 1, false, NULL);
}

static void dispatch_presence(struct fo_plugin *plugin, const struct mosquitto *client, const char *client_id,
		bool online)
{
	struct text json = {.length = 0};

	text_addf(&json, "{\"online\":%s,\"address\":", online ? "true" : "false");
	text_add_json(&json, mosquitto_client_address(client));
	text_addf(&json, ",\"clean_session\":%s,\"time_ms\":%" PRId64 "}",
			mosquitto_client_clean_session(client) ? "true" : "false", realtime_ms());
	if(!json.overflow){
		fo_dispatch_submit(&plugin->dispatch, FO_KIND_PRESENCE, client_id, json.data, (uint32_t)json.length,
				fo_monotonic_ms());
	}
}

static void dispatch_subscribed(struct fo_plugin *plugin, const char *client_id, const char *topic_filter, int qos)
{
	struct text json = {.length = 0};

	text_add(&json, "{\"filter\":", 10);
	text_add_json(&json, topic_filter);
	text_addf(&json, ",\"qos\":%d,\"time_ms\":%" PRId64 "}", qos, realtime_ms());
	if(!json.overflow){
		fo_dispatch_submit(&plugin->dispatch, FO_KIND_SUBSCRIBED, client_id, json.data, (uint32_t)json.length,
				fo_monotonic_ms());
	}
}

static void send_welcome(struct fo_plugin *plugin, const char *client_id)
{
	char topic[sizeof(NODE_PREFIX) + FO_HANDLER_ID_MAX + sizeof("/welcome")];
	struct text json = {.length = 0};

	/* client_id passed fo_handler_id_valid: at most FO_HANDLER_ID_MAX bytes, so the topic fits */
	snprintf(topic, sizeof(topic), NODE_PREFIX "%s/welcome", client_id);
	text_addf(&json, "{\"protocol\":%d,\"boot\":\"%s\",\"window\":%zu}", FO_PROTOCOL_VERSION, plugin->boot_id,
			plugin->dispatch.limits.window);
	if(!json.overflow){
		mosquitto_broker_publish_copy(client_id, topic, (int)json.length, json.data, 1, false, NULL);
	}
}

/* "$fleetops/ack/<id>" carries the decimal seq up to which the node is done. */
static bool parse_seq(const void *payload, uint32_t length, uint64_t *seq)
{
	const char *digits = payload;
	uint64_t value = 0;

	if(length == 0 || length > 20){
		return false;
	}
	for(uint32_t i = 0; i < length; i++){
		unsigned digit = (unsigned char)digits[i] - (unsigned)'0';
		if(digit > 9 || value > (UINT64_MAX - digit) / 10){
			return false;
		}
		value = value * 10 + digit;
	}
	*seq = value;
	return true;
}

/* --- database events ------------------------------------------------------------------------------------ */

static void on_device_changed(void *context, const char *client_id)
{
	struct fo_plugin *plugin = context;
	struct fo_device device;
	struct fo_device_entry *entry;

	if(!fo_split_client_id(client_id, &device)){
		return;
	}
	entry = fo_devmap_find(&plugin->devices, client_id);
	if(entry != NULL && entry->has_credentials){
		entry->has_credentials = false;
		OPENSSL_cleanse(entry->key, sizeof(entry->key));
		fo_devmap_settle(&plugin->devices, entry);
	}
	/* Disabled, deleted or re-keyed: close the session; its next CONNECT is checked against the database.
	 * (Never pass NULL here: that would close every client.) */
	if(mosquitto_kick_client_by_clientid(client_id, false) == MOSQ_ERR_SUCCESS){
		fo_log(MOSQ_LOG_NOTICE, "device %s changed in the database: connection closed", client_id);
	}
}

static void on_service_secret(void *context, const char *secret)
{
	struct fo_plugin *plugin = context;

	if(plugin->service_secret != NULL){
		OPENSSL_cleanse(plugin->service_secret, strlen(plugin->service_secret));
		free(plugin->service_secret);
		plugin->service_secret = NULL;
	}
	if(secret == NULL){
		fo_log(MOSQ_LOG_WARNING, "no broker_credentials row named '%s': fleetops nodes cannot connect until a node "
				"creates it (it does at start)", plugin->service_user);
		return;
	}
	plugin->service_secret = strdup(secret);
	if(plugin->service_secret == NULL){
		fo_log(MOSQ_LOG_ERR, "out of memory: the password of '%s' is lost, nodes cannot connect", plugin->service_user);
		return;
	}
	fo_log(MOSQ_LOG_NOTICE, "service identity '%s': password read from the database", plugin->service_user);
}

static void on_link_lost(void *context)
{
	struct fo_plugin *plugin = context;

	fo_devmap_forget_credentials(&plugin->devices);
	fo_log(MOSQ_LOG_WARNING, "cached device credentials dropped: changes made while the database link was down "
			"would have been missed");
}

/* --- callbacks ------------------------------------------------------------------------------------------ */

static int refuse(const struct mosquitto *client, const char *reason)
{
	const char *client_id = mosquitto_client_id(client);
	const char *address = mosquitto_client_address(client);

	/* Mosquitto 2.0 answers every refusal with CONNACK 5; the cause is only in this line. */
	fo_log(MOSQ_LOG_NOTICE, "refused client %.80s from %.64s: %s", client_id ? client_id : "(none)",
			address ? address : "?", reason);
	return MOSQ_ERR_AUTH;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *auth = event_data;
	struct fo_plugin *plugin = userdata;
	const char *client_id = mosquitto_client_id(auth->client);
	struct fo_device device;
	struct fo_device_entry *entry;
	uint8_t key[FO_KEY_MAX_BYTES];
	size_t key_length = 0;
	bool enabled;
	bool signed_ok;

	(void)event;
	if(auth->username == NULL){
		return refuse(auth->client, "anonymous client (no user name)");
	}
	if(strcmp(auth->username, plugin->service_user) == 0){
		if(plugin->service_secret == NULL){
			return refuse(auth->client, "service identity: its password has not been read from the database");
		}
		if(!fo_secret_equals(auth->password, plugin->service_secret)){
			return refuse(auth->client, "service identity: wrong password");
		}
		return MOSQ_ERR_SUCCESS;
	}
	/* The checks that need no database come first, so garbage never costs a query. */
	if(!fo_split_client_id(client_id, &device)){
		return refuse(auth->client, "malformed client id");
	}
	if(mosquitto_client_keepalive(auth->client) > FO_KEEPALIVE_MAX_S){
		return refuse(auth->client, "keep-alive over " FO_STR(FO_KEEPALIVE_MAX_S) " s");
	}
	switch(fo_check_username(auth->username, client_id, (int64_t)time(NULL))){
		case FO_USERNAME_MALFORMED:
			return refuse(auth->client, "malformed user name");
		case FO_USERNAME_EXPIRED:
			return refuse(auth->client, "signature expired");
		default:
			break;
	}
	entry = fo_devmap_find(&plugin->devices, client_id);
	if(entry != NULL && entry->has_credentials){
		memcpy(key, entry->key, entry->key_length);
		key_length = entry->key_length;
		enabled = entry->enabled;
	}else{
		char product_id[FO_PRODUCT_ID_LENGTH + 1];
		char device_name[FO_DEVICE_NAME_MAX_LENGTH + 1];
		struct fo_credentials credentials;

		memcpy(product_id, device.product_id, device.product_id_length);
		product_id[device.product_id_length] = '\0';
		memcpy(device_name, device.device_name, device.device_name_length);
		device_name[device.device_name_length] = '\0';
		switch(fo_pglink_lookup(plugin->link, product_id, device_name, &credentials)){
			case FO_LOOKUP_UNAVAILABLE:
				return refuse(auth->client, "the database cannot be reached");
			case FO_LOOKUP_NOT_FOUND:
				return refuse(auth->client, "unknown device");
			default:
				break;
		}
		/* An empty key never comes from CreateDevice (it generates or checks the PSK): refuse it. */
		if(!credentials.psk_valid || !fo_base64_decode(credentials.psk, key, sizeof(key), &key_length)
				|| key_length == 0){
			OPENSSL_cleanse(&credentials, sizeof(credentials));
			return refuse(auth->client, "bad signature (the stored DevicePsk is not valid Base64)");
		}
		enabled = credentials.enabled;
		OPENSSL_cleanse(&credentials, sizeof(credentials));
		/* The lookup may have dropped the cache (a lost link): look the entry up again. */
		entry = fo_devmap_add(&plugin->devices, client_id);
		if(entry != NULL){
			memcpy(entry->key, key, key_length);
			entry->key_length = (uint8_t)key_length;
			entry->enabled = enabled;
			entry->has_credentials = true;
			fo_devmap_settle(&plugin->devices, entry);
		}
	}
	signed_ok = fo_check_password(auth->username, auth->password, key, key_length);
	OPENSSL_cleanse(key, sizeof(key));
	if(!signed_ok){
		return refuse(auth->client, "bad signature");
	}
	if(!enabled){
		return refuse(auth->client, "device disabled"); /* checked last: only a holder of valid credentials learns it */
	}
	entry = fo_devmap_add(&plugin->devices, client_id);
	if(entry == NULL){
		return refuse(auth->client, "out of memory");
	}
	/* The current connection of this client id: a take-over's old connection, when it closes, is not. */
	entry->connection = auth->client;
	fo_devmap_settle(&plugin->devices, entry);
	dispatch_presence(plugin, auth->client, client_id, true);
	return MOSQ_ERR_SUCCESS;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *check = event_data;
	struct fo_plugin *plugin = userdata;
	const char *client_id = mosquitto_client_id(check->client);
	struct fo_device device;

	(void)event;
	if(client_id == NULL || check->topic == NULL){
		return MOSQ_ERR_ACL_DENIED;
	}
	if(is_service(plugin, check->client)){
		/* The service identity may use every topic; its subscription to its own node topics registers it. */
		if(topic_is(check->topic, NODE_PREFIX, client_id, "/#")){
			if(check->access == MOSQ_ACL_SUBSCRIBE
					&& !fo_dispatch_register(&plugin->dispatch, client_id, check->client)){
				return MOSQ_ERR_ACL_DENIED;
			}
			if(check->access == MOSQ_ACL_UNSUBSCRIBE){
				fo_dispatch_unregister(&plugin->dispatch, client_id, check->client, "unsubscribed");
			}
		}
		return MOSQ_ERR_SUCCESS;
	}
	if(!fo_split_client_id(client_id, &device)){
		return MOSQ_ERR_ACL_DENIED;
	}
	switch(check->access){
		case MOSQ_ACL_READ:
			/* Every delivery to every device: a few comparisons, no allocation. */
			return (fo_topic_access(&device, check->topic) & FO_ACCESS_SUBSCRIBE) ? MOSQ_ERR_SUCCESS
				: MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_WRITE:
			/* Payloads over the limit are dropped (a QoS 1 PUBLISH still gets its PUBACK), as on the
			 * embedded broker. */
			if(check->payloadlen > FO_PAYLOAD_MAX_BYTES){
				return MOSQ_ERR_ACL_DENIED;
			}
			return fo_may_publish(&device, check->topic) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		case MOSQ_ACL_SUBSCRIBE:
			if(!fo_may_subscribe(&device, check->topic)){
				return MOSQ_ERR_ACL_DENIED;
			}
			dispatch_subscribed(plugin, client_id, check->topic, check->qos);
			return MOSQ_ERR_SUCCESS;
		case MOSQ_ACL_UNSUBSCRIBE:
			return MOSQ_ERR_SUCCESS; /* giving up a subscription reveals nothing */
		default:
			return MOSQ_ERR_ACL_DENIED;
	}
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *message = event_data;
	struct fo_plugin *plugin = userdata;
	const char *client_id = mosquitto_client_id(message->client);
	struct fo_device device;
	char request_topic[sizeof(SHADOW_REQUEST_PREFIX) + FO_DEVICE_ID_MAX + 1];
	uint64_t seq;

	(void)event;
	if(client_id == NULL || message->topic == NULL){
		return MOSQ_ERR_SUCCESS;
	}
	if(is_service(plugin, message->client)){
		if(strncmp(message->topic, "$fleetops/", 10) != 0){
			return MOSQ_ERR_SUCCESS;
		}
		if(topic_is(message->topic, ACK_PREFIX, client_id, "")){
			if(parse_seq(message->payload, message->payloadlen, &seq)){
				fo_dispatch_ack(&plugin->dispatch, client_id, message->client, seq);
			}else{
				fo_log(MOSQ_LOG_WARNING, "node %.64s sent an acknowledgement that is not a decimal number", client_id);
			}
		}else if(topic_is(message->topic, HELLO_PREFIX, client_id, "") && fo_handler_id_valid(client_id)){
			send_welcome(plugin, client_id);
		}
		/* The $fleetops/ namespace is the plugin's: nothing there is routed (a node cannot inject requests). */
		return MOSQ_ERR_ACL_DENIED;
	}
	/* The device protocol stores no retained messages (the embedded broker ignores the flag too). */
	message->retain = false;
	if(!fo_split_client_id(client_id, &device)){
		return MOSQ_ERR_SUCCESS;
	}
	snprintf(request_topic, sizeof(request_topic), SHADOW_REQUEST_PREFIX "%.*s/%s", (int)device.product_id_length,
			device.product_id, device.device_name);
	if(strcmp(message->topic, request_topic) == 0){
		fo_dispatch_submit(&plugin->dispatch, FO_KIND_SHADOW, client_id, message->payload, message->payloadlen,
				fo_monotonic_ms());
		/* Handed to one node as $fleetops/node/<node>/shadow/...; the original is not routed. (Replacing the
		 * topic in place is not portable: 2.0.11 leaks the old topic, 2.0.15 frees it.) */
		return MOSQ_ERR_ACL_DENIED;
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *disconnect = event_data;
	struct fo_plugin *plugin = userdata;
	const char *client_id = mosquitto_client_id(disconnect->client);
	struct fo_device_entry *entry;

	(void)event;
	if(client_id == NULL){
		return MOSQ_ERR_SUCCESS; /* a refused CONNECT: Mosquitto has already cleared its id */
	}
	if(is_service(plugin, disconnect->client)){
		fo_dispatch_unregister(&plugin->dispatch, client_id, disconnect->client, "disconnected");
		return MOSQ_ERR_SUCCESS;
	}
	entry = fo_devmap_find(&plugin->devices, client_id);
	if(entry == NULL || entry->connection != disconnect->client){
		return MOSQ_ERR_SUCCESS; /* not the current connection of this client id (a take-over) */
	}
	entry->connection = NULL;
	fo_devmap_settle(&plugin->devices, entry);
	dispatch_presence(plugin, disconnect->client, client_id, false);
	return MOSQ_ERR_SUCCESS;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	struct fo_plugin *plugin = userdata;
	int64_t now = fo_monotonic_ms();

	(void)event;
	(void)event_data;
	if(now - plugin->last_tick_ms < TICK_INTERVAL_MS){
		return MOSQ_ERR_SUCCESS;
	}
	plugin->last_tick_ms = now;
	fo_pglink_tick(plugin->link);
	fo_dispatch_tick(&plugin->dispatch, now);
	return MOSQ_ERR_SUCCESS;
}

/* --- options, init, cleanup ----------------------------------------------------------------------------- */

struct settings {
	const char *database_url;
	const char *service_user;
	long lookup_timeout_ms;
	long credential_cache_size;
	long queue_max_messages;
	long queue_max_bytes;
	long window;
	long pending_max_age_s;
};

struct int_option {
	const char *key;
	long *value;
	long min, max;
};

static bool parse_long(const char *text, long min, long max, long *out)
{
	char *end = NULL;
	long value;

	if(text == NULL || *text == '\0'){
		return false;
	}
	value = strtol(text, &end, 10);
	if(*end != '\0' || value < min || value > max){
		return false;
	}
	*out = value;
	return true;
}

static bool read_options(struct settings *settings, struct mosquitto_opt *options, int option_count)
{
	struct int_option ints[] = {
		{"lookup_timeout_ms", &settings->lookup_timeout_ms, 10, 60000},
		{"credential_cache_size", &settings->credential_cache_size, 0, 100000000},
		{"queue_max_messages", &settings->queue_max_messages, 1, 100000000},
		{"queue_max_bytes", &settings->queue_max_bytes, 65536, 1L << 40},
		{"window", &settings->window, 1, 65535},
		{"pending_max_age_s", &settings->pending_max_age_s, 1, 86400},
	};

	for(int i = 0; i < option_count; i++){
		const char *key = options[i].key, *value = options[i].value;
		bool known = false;

		if(strcmp(key, "database_url") == 0){
			settings->database_url = value;
			continue;
		}
		if(strcmp(key, "service_user") == 0){
			if(value == NULL || *value == '\0' || strlen(value) > SERVICE_USER_MAX || strchr(value, ';') != NULL){
				fo_log(MOSQ_LOG_ERR, "plugin_opt_service_user must be 1 to %d characters without ';' (device user "
						"names have them)", SERVICE_USER_MAX);
				return false;
			}
			settings->service_user = value;
			continue;
		}
		for(size_t j = 0; j < sizeof(ints) / sizeof(ints[0]); j++){
			if(strcmp(key, ints[j].key) == 0){
				known = true;
				if(!parse_long(value, ints[j].min, ints[j].max, ints[j].value)){
					fo_log(MOSQ_LOG_ERR, "plugin_opt_%s must be a whole number from %ld to %ld, got '%.32s'", key,
							ints[j].min, ints[j].max, value ? value : "");
					return false;
				}
			}
		}
		if(!known){
			fo_log(MOSQ_LOG_ERR, "unknown option plugin_opt_%.64s (docs/mosquitto.md lists the options)", key);
			return false;
		}
	}
	if(settings->database_url == NULL || *settings->database_url == '\0'){
		fo_log(MOSQ_LOG_ERR, "plugin_opt_database_url is missing: set it to fleetops' PostgreSQL URL, e.g. "
				"plugin_opt_database_url postgresql://fleetops@db:5432/fleetops");
		return false;
	}
	return true;
}

static const int EVENTS[] = {MOSQ_EVT_BASIC_AUTH, MOSQ_EVT_ACL_CHECK, MOSQ_EVT_MESSAGE, MOSQ_EVT_DISCONNECT,
	MOSQ_EVT_TICK};
static const MOSQ_FUNC_generic_callback CALLBACKS[] = {on_basic_auth, on_acl_check, on_message, on_disconnect,
	on_tick};

static void destroy(struct fo_plugin *plugin)
{
	if(plugin->callbacks_registered){
		for(size_t i = 0; i < sizeof(EVENTS) / sizeof(EVENTS[0]); i++){
			mosquitto_callback_unregister(plugin->identifier, EVENTS[i], CALLBACKS[i], NULL);
		}
	}
	fo_pglink_free(plugin->link);
	fo_dispatch_destroy(&plugin->dispatch);
	if(plugin->devices.slots != NULL){
		fo_devmap_destroy(&plugin->devices);
	}
	if(plugin->service_secret != NULL){
		OPENSSL_cleanse(plugin->service_secret, strlen(plugin->service_secret));
		free(plugin->service_secret);
	}
	free(plugin);
}

FO_EXPORT int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5){
			return 5;
		}
	}
	return -1;
}

FO_EXPORT int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options,
		int option_count)
{
	struct settings settings = {
		.service_user = "fleetops",
		.lookup_timeout_ms = 500,
		.credential_cache_size = 100000,
		.queue_max_messages = 10000,
		.queue_max_bytes = 16L << 20,
		.window = 500,
		.pending_max_age_s = 60,
	};
	struct fo_plugin *plugin;
	uint8_t random[24];
	struct fo_hash_key key;
	struct fo_dispatch_limits limits;
	struct timespec now;
	const struct fo_pglink_events events = {
		.device_changed = on_device_changed, .service_secret = on_service_secret, .lost = on_link_lost,
	};
	struct fo_pglink_events bound;

	if(!read_options(&settings, options, option_count)){
		return MOSQ_ERR_INVAL;
	}
	if(getrandom(random, sizeof(random), 0) != (ssize_t)sizeof(random)){
		fo_log(MOSQ_LOG_ERR, "cannot read random bytes for the hash key");
		return MOSQ_ERR_UNKNOWN;
	}
	plugin = calloc(1, sizeof(*plugin));
	if(plugin == NULL){
		return MOSQ_ERR_NOMEM;
	}
	plugin->identifier = identifier;
	strcpy(plugin->service_user, settings.service_user);
	memcpy(&key.k0, random, 8);
	memcpy(&key.k1, random + 8, 8);
	for(int i = 0; i < 8; i++){
		snprintf(plugin->boot_id + 2 * i, 3, "%02x", random[16 + i]);
	}
	if(!fo_devmap_init(&plugin->devices, (size_t)settings.credential_cache_size, &key)){
		destroy(plugin);
		return MOSQ_ERR_NOMEM;
	}
	limits.queue_max_messages = (size_t)settings.queue_max_messages;
	limits.queue_max_bytes = (size_t)settings.queue_max_bytes;
	limits.window = (size_t)settings.window;
	limits.pending_max_age_ms = (int64_t)settings.pending_max_age_s * 1000;
	/* seq starts at the start time in microseconds: it keeps growing across broker restarts */
	clock_gettime(CLOCK_REALTIME, &now);
	fo_dispatch_init(&plugin->dispatch, &limits, &plugin->devices, &key, publish_to,
			(uint64_t)now.tv_sec * 1000000u + (uint64_t)now.tv_nsec / 1000u);
	bound = events;
	bound.context = plugin;
	plugin->link = fo_pglink_new(settings.database_url, plugin->service_user, settings.lookup_timeout_ms, &bound);
	if(plugin->link == NULL){
		destroy(plugin);
		return MOSQ_ERR_NOMEM;
	}
	if(!fo_pglink_start(plugin->link, fo_monotonic_ms() + 3000)){
		fo_log(MOSQ_LOG_WARNING, "the database is not ready at start; the plugin keeps trying");
	}
	for(size_t i = 0; i < sizeof(EVENTS) / sizeof(EVENTS[0]); i++){
		if(mosquitto_callback_register(identifier, EVENTS[i], CALLBACKS[i], NULL, plugin) != MOSQ_ERR_SUCCESS){
			fo_log(MOSQ_LOG_ERR, "cannot register callback for event %d", EVENTS[i]);
			plugin->callbacks_registered = true; /* unregistering one that is not registered is harmless */
			destroy(plugin);
			return MOSQ_ERR_UNKNOWN;
		}
	}
	plugin->callbacks_registered = true;
	*userdata = plugin;
	fo_log(MOSQ_LOG_NOTICE, "plugin ready (node protocol %d, service user '%s', lookup timeout %ld ms)",
			FO_PROTOCOL_VERSION, plugin->service_user, settings.lookup_timeout_ms);
	return MOSQ_ERR_SUCCESS;
}

FO_EXPORT int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)options;
	(void)option_count;
	if(userdata != NULL){
		destroy(userdata);
	}
	return MOSQ_ERR_SUCCESS;
}
