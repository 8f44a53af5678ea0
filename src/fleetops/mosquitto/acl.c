/* The device ACL: matching topics against the generated rule table (acl.h). */
#include "acl.h"

#include <string.h>

#include "fleetops_rules.h"

struct span {
	const char *text;
	size_t length;
};

static bool syntax_allows(const struct fo_syntax_def *syntax, const char *text, size_t length)
{
	if(length < syntax->min_length || length > syntax->max_length){
		return false;
	}
	for(size_t i = 0; i < length; i++){
		unsigned char c = (unsigned char)text[i];
		if(c >= 128 || !(syntax->allowed[c >> 3] & (1u << (c & 7)))){
			return false;
		}
	}
	return true;
}

bool fo_split_client_id(const char *client_id, struct fo_device *device)
{
	const struct fo_syntax_def *pid = &fo_syntaxes[FO_SYNTAX_PID];
	size_t length;

	if(client_id == NULL){
		return false;
	}
	length = strnlen(client_id, (size_t)pid->max_length + fo_syntaxes[FO_SYNTAX_DN].max_length + 1);
	if(length <= pid->max_length){
		return false;
	}
	device->product_id = client_id;
	device->product_id_length = pid->max_length; /* fixed length: the generator checks min == max */
	device->device_name = client_id + pid->max_length;
	device->device_name_length = length - pid->max_length;
	return syntax_allows(pid, device->product_id, device->product_id_length)
		&& syntax_allows(&fo_syntaxes[FO_SYNTAX_DN], device->device_name, device->device_name_length);
}

/* The levels of a topic or filter; -1 if it is empty, longer than the byte limit or has too many levels. */
static int split_levels(const char *topic, struct span levels[FO_TOPIC_MAX_LEVELS])
{
	const char *start = topic;
	int count = 0;
	size_t length = strnlen(topic, FO_TOPIC_MAX_BYTES + 1);

	if(length == 0 || length > FO_TOPIC_MAX_BYTES){
		return -1;
	}
	for(const char *p = topic; ; p++){
		if(*p == '/' || *p == '\0'){
			if(count == FO_TOPIC_MAX_LEVELS){
				return -1;
			}
			levels[count].text = start;
			levels[count].length = (size_t)(p - start);
			count++;
			if(*p == '\0'){
				return count;
			}
			start = p + 1;
		}
	}
}

static bool level_matches(const struct fo_level_def *level, const struct span *text, const struct fo_device *device)
{
	switch(level->check){
		case FO_CHECK_EQUALS:
			return text->length == level->literal_length && memcmp(text->text, level->literal, text->length) == 0;
		case FO_CHECK_OWN_PID:
			return text->length == device->product_id_length
				&& memcmp(text->text, device->product_id, text->length) == 0;
		case FO_CHECK_OWN_DN:
			return text->length == device->device_name_length
				&& memcmp(text->text, device->device_name, text->length) == 0;
		case FO_CHECK_SYNTAX:
			return syntax_allows(&fo_syntaxes[level->syntax], text->text, text->length);
		case FO_CHECK_NON_EMPTY:
			return text->length > 0
				&& !(text->length == 1 && (text->text[0] == '+' || text->text[0] == '#'));
		default:
			return false;
	}
}

/* The access of the first rule (concrete or wildcard ones) whose levels all match; FO_ACCESS_NONE if none. */
static int first_match(const struct fo_device *device, const struct span *levels, int count, bool wildcard)
{
	for(size_t r = 0; r < sizeof(fo_rules) / sizeof(fo_rules[0]); r++){
		const struct fo_rule_def *rule = &fo_rules[r];
		int i;

		if(rule->level_count != count || (rule->wildcard != 0) != wildcard){
			continue;
		}
		for(i = 0; i < count; i++){
			if(!level_matches(&fo_levels[rule->first_level + i], &levels[i], device)){
				break;
			}
		}
		if(i == count){
			return rule->access;
		}
	}
	return FO_ACCESS_NONE;
}

int fo_topic_access(const struct fo_device *device, const char *topic)
{
	struct span levels[FO_TOPIC_MAX_LEVELS];
	int count;

	if(topic == NULL || strpbrk(topic, "+#") != NULL){
		return FO_ACCESS_NONE; /* a topic name has no wildcards (MQTT 3.1.1 section 4.7) */
	}
	count = split_levels(topic, levels);
	if(count < 0){
		return FO_ACCESS_NONE;
	}
	return first_match(device, levels, count, false);
}

bool fo_may_publish(const struct fo_device *device, const char *topic)
{
	return (fo_topic_access(device, topic) & FO_ACCESS_PUBLISH) != 0;
}

bool fo_may_subscribe(const struct fo_device *device, const char *topic_filter)
{
	struct span levels[FO_TOPIC_MAX_LEVELS];
	bool wildcard = false;
	int count;

	if(topic_filter == NULL){
		return false;
	}
	count = split_levels(topic_filter, levels);
	if(count < 0){
		return false;
	}
	for(int i = 0; i < count; i++){
		const struct span *level = &levels[i];
		bool plus = memchr(level->text, '+', level->length) != NULL;
		bool hash = memchr(level->text, '#', level->length) != NULL;

		/* MQTT 3.1.1 section 4.7.1: "+" fills a whole level, "#" a whole last level. */
		if((plus || hash) && (level->length != 1 || (hash && i != count - 1))){
			return false;
		}
		wildcard = wildcard || plus || hash;
	}
	return (first_match(device, levels, count, wildcard) & FO_ACCESS_SUBSCRIBE) != 0;
}
