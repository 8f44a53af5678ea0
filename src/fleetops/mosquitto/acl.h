/* The device ACL of the rule file device_acl.rules, compiled into the plugin (docs/mosquitto.md#acl).
 *
 * `fleetops mosquitto build` generates fleetops_rules.h (the rule table) from the rule file that the Python side
 * (fleetops.messaging.topics) reads too, so both apply one rule set. Pure functions: no allocation, no I/O.
 */
#ifndef FLEETOPS_ACL_H
#define FLEETOPS_ACL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FO_ACCESS_NONE 0
#define FO_ACCESS_PUBLISH 1
#define FO_ACCESS_SUBSCRIBE 2

/* How a rule level is checked (the generator writes these values). */
enum fo_check {
	FO_CHECK_EQUALS = 0,   /* the literal text (also a "+" / "#" level of a wildcard rule) */
	FO_CHECK_OWN_PID = 1,  /* the device's own ProductId */
	FO_CHECK_OWN_DN = 2,   /* the device's own DeviceName */
	FO_CHECK_SYNTAX = 3,   /* any text of a syntax class */
	FO_CHECK_NON_EMPTY = 4 /* any non-empty level that is not a wildcard */
};

struct fo_syntax_def {
	uint8_t allowed[16]; /* bitmap of the allowed ASCII characters */
	uint16_t min_length;
	uint16_t max_length;
};

struct fo_level_def {
	uint8_t check;  /* enum fo_check */
	uint8_t syntax; /* index into fo_syntaxes for FO_CHECK_SYNTAX */
	uint16_t literal_length;
	const char *literal;
};

struct fo_rule_def {
	uint8_t access;   /* FO_ACCESS_* */
	uint8_t wildcard; /* matches filters only */
	uint8_t level_count;
	uint16_t first_level; /* index into fo_levels */
};

/* A device's ids, pointing into its client id. */
struct fo_device {
	const char *product_id;
	size_t product_id_length;
	const char *device_name;
	size_t device_name_length;
};

/* Split ${productId}${deviceName} after the ProductId; false unless both parts have their syntax. */
bool fo_split_client_id(const char *client_id, struct fo_device *device);

/* FO_ACCESS_* of the first rule matching the concrete topic (none for an invalid or overlong topic). */
int fo_topic_access(const struct fo_device *device, const char *topic);

bool fo_may_publish(const struct fo_device *device, const char *topic);

/* A filter with wildcards only if a wildcard rule spells it (device_acl.rules). */
bool fo_may_subscribe(const struct fo_device *device, const char *topic_filter);

#endif
