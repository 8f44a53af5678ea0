/* Test tool: runs the plugin's pure C functions (acl.c, auth.c) on inputs read from stdin, one answer a line,
 * so that tests can compare them with the Python rules on many generated inputs.
 *
 * A line is a command and its arguments, each argument "x" followed by the hex of its bytes:
 *   topic <client id> <topic>                -> FO_ACCESS_* bits of fo_topic_access
 *   subscribe <client id> <filter>           -> 1 if fo_may_subscribe
 *   split <client id>                        -> 1 if fo_split_client_id
 *   username <user name> <client id> <now>   -> enum fo_username_check (now: decimal)
 *   base64 <text>                            -> "-" if refused, else "x" + hex of the bytes
 *   password <user name> <password> <psk>    -> 1 if the PSK decodes and fo_check_password accepts
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acl.h"
#include "auth.h"

#define LINE_MAX_BYTES 300000
#define ARGS_MAX 4

static int hex_value(char c)
{
	if(c >= '0' && c <= '9') return c - '0';
	if(c >= 'a' && c <= 'f') return c - 'a' + 10;
	return -1;
}

/* Decode "x<hex>" in place into a NUL-terminated string; NULL if malformed. */
static char *decode(char *arg)
{
	size_t length;
	char *out = arg;

	if(arg[0] != 'x'){
		return NULL;
	}
	length = strlen(arg + 1);
	if(length % 2){
		return NULL;
	}
	for(size_t i = 0; i < length; i += 2){
		int high = hex_value(arg[1 + i]), low = hex_value(arg[2 + i]);
		if(high < 0 || low < 0){
			return NULL;
		}
		out[i / 2] = (char)(high * 16 + low);
	}
	out[length / 2] = '\0';
	return out;
}

int main(void)
{
	static char line[LINE_MAX_BYTES];

	while(fgets(line, sizeof(line), stdin) != NULL){
		char *args[ARGS_MAX] = {NULL};
		char *command = strtok(line, " \n");
		int count = 0;
		struct fo_device device;

		if(command == NULL){
			continue;
		}
		for(char *arg = strtok(NULL, " \n"); arg != NULL && count < ARGS_MAX; arg = strtok(NULL, " \n")){
			args[count++] = arg;
		}
		if(strcmp(command, "topic") == 0 && count == 2){
			const char *client_id = decode(args[0]), *topic = decode(args[1]);
			printf("%d\n", fo_split_client_id(client_id, &device) ? fo_topic_access(&device, topic) : -1);
		}else if(strcmp(command, "subscribe") == 0 && count == 2){
			const char *client_id = decode(args[0]), *topic_filter = decode(args[1]);
			printf("%d\n", fo_split_client_id(client_id, &device) ? (int)fo_may_subscribe(&device, topic_filter) : -1);
		}else if(strcmp(command, "split") == 0 && count == 1){
			printf("%d\n", (int)fo_split_client_id(decode(args[0]), &device));
		}else if(strcmp(command, "username") == 0 && count == 3){
			const char *username = decode(args[0]), *client_id = decode(args[1]);
			printf("%d\n", (int)fo_check_username(username, client_id, strtoll(args[2], NULL, 10)));
		}else if(strcmp(command, "base64") == 0 && count == 1){
			uint8_t key[FO_KEY_MAX_BYTES];
			size_t length = 0;
			if(fo_base64_decode(decode(args[0]), key, sizeof(key), &length)){
				printf("x");
				for(size_t i = 0; i < length; i++){
					printf("%02x", key[i]);
				}
				printf("\n");
			}else{
				printf("-\n");
			}
		}else if(strcmp(command, "password") == 0 && count == 3){
			const char *username = decode(args[0]), *password = decode(args[1]), *psk = decode(args[2]);
			uint8_t key[FO_KEY_MAX_BYTES];
			size_t length = 0;
			bool ok = fo_base64_decode(psk, key, sizeof(key), &length)
				&& fo_check_password(username, password, key, length);
			printf("%d\n", (int)ok);
		}else{
			printf("?\n");
		}
		fflush(stdout);
	}
	return 0;
}
