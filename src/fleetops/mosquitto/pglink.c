/* The PostgreSQL link (pglink.h): a small state machine over libpq's asynchronous API. */
#include "pglink.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "log.h"

#define CONNECT_TIMEOUT_MS 5000 /* a connection attempt (TCP, TLS, setup commands) that takes longer is dropped */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define SERVICE_SECRET_MAX 256

#define DEVICE_STATEMENT "fleetops_device"
#define DEVICE_SQL \
	"SELECT d.psk, d.enabled FROM devices d JOIN products p ON p.id = d.product_pk " \
	"WHERE p.product_id = $1 AND d.name = $2"
#define SERVICE_STATEMENT "fleetops_service"
#define SERVICE_SQL "SELECT secret FROM broker_credentials WHERE name = $1"

enum link_state { LINK_DOWN, LINK_CONNECTING, LINK_SETUP, LINK_READY };

/* The command whose results are awaited. Setup runs LISTEN first, so no change committed after a lookup's
 * snapshot can go unnoticed. */
enum command { CMD_NONE, CMD_LISTEN, CMD_PREPARE_DEVICE, CMD_PREPARE_SERVICE, CMD_SERVICE, CMD_DEVICE };

struct fo_pglink {
	char *conninfo;
	char *service_name;
	int64_t lookup_timeout_ms;
	struct fo_pglink_events events;
	PGconn *conn;
	enum link_state state;
	enum command busy;
	PostgresPollingStatusType connect_poll;
	bool command_failed;
	char command_error[200];
	bool service_reload;
	int64_t attempt_started_ms;
	int64_t next_attempt_ms;
	int64_t backoff_ms;
	bool unavailable_logged;
	bool cache_trusted; /* the plugin may hold credentials read on this session: report its loss */
	bool attempt_waited; /* a lookup already waited out its timeout for this connection attempt */
	struct fo_credentials *lookup_out;
	enum fo_lookup lookup_result;
};

int64_t fo_monotonic_ms(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* The first line of a libpq message, for the log. */
static void first_line(char *out, size_t size, const char *message)
{
	size_t length = strcspn(message ? message : "", "\n");
	if(length >= size){
		length = size - 1;
	}
	memcpy(out, message ? message : "", length);
	out[length] = '\0';
}

static void drop(struct fo_pglink *link, const char *why)
{
	char detail[200];

	first_line(detail, sizeof(detail), link->conn ? PQerrorMessage(link->conn) : "");
	if(link->state == LINK_READY || link->state == LINK_SETUP){
		fo_log(MOSQ_LOG_ERR, "database link lost (%s%s%s); device CONNECTs are refused until it is back",
				why, detail[0] ? ": " : "", detail);
	}else if(!link->unavailable_logged){
		fo_log(MOSQ_LOG_ERR, "cannot reach the database (%s%s%s); retrying, device CONNECTs are refused meanwhile",
				why, detail[0] ? ": " : "", detail);
		link->unavailable_logged = true;
	}
	if(link->conn != NULL){
		PQfinish(link->conn);
		link->conn = NULL;
	}
	link->state = LINK_DOWN;
	link->busy = CMD_NONE;
	link->next_attempt_ms = fo_monotonic_ms() + link->backoff_ms;
	link->backoff_ms = link->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : link->backoff_ms * 2;
	if(link->cache_trusted){
		link->cache_trusted = false;
		link->events.lost(link->events.context);
	}
}

struct fo_pglink *fo_pglink_new(const char *conninfo, const char *service_name, int64_t lookup_timeout_ms,
		const struct fo_pglink_events *events)
{
	struct fo_pglink *link = calloc(1, sizeof(*link));

	if(link == NULL){
		return NULL;
	}
	link->conninfo = strdup(conninfo);
	link->service_name = strdup(service_name);
	if(link->conninfo == NULL || link->service_name == NULL){
		fo_pglink_free(link);
		return NULL;
	}
	link->lookup_timeout_ms = lookup_timeout_ms;
	link->events = *events;
	link->state = LINK_DOWN;
	link->backoff_ms = BACKOFF_MIN_MS;
	return link;
}

void fo_pglink_free(struct fo_pglink *link)
{
	if(link == NULL){
		return;
	}
	if(link->conn != NULL){
		PQfinish(link->conn);
	}
	if(link->conninfo != NULL){
		memset(link->conninfo, 0, strlen(link->conninfo)); /* it may hold a password */
	}
	free(link->conninfo);
	free(link->service_name);
	free(link);
}

bool fo_pglink_ready(const struct fo_pglink *link)
{
	return link->state == LINK_READY;
}

static void start_connect(struct fo_pglink *link)
{
	/* Our defaults first: the expanded URI (dbname, last) overrides any of them. TCP keepalives notice a
	 * silent network failure within about 11 s (5 + 3 x 2). */
	static const char *const keywords[] = {
		"application_name", "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
		"dbname", NULL,
	};
	const char *values[] = {"fleetops-mosquitto", "1", "5", "2", "3", link->conninfo, NULL};

	link->conn = PQconnectStartParams(keywords, values, 1);
	link->attempt_started_ms = fo_monotonic_ms();
	link->attempt_waited = false;
	if(link->conn == NULL){
		drop(link, "out of memory");
		return;
	}
	if(PQstatus(link->conn) == CONNECTION_BAD){
		drop(link, "cannot start a connection");
		return;
	}
	link->state = LINK_CONNECTING;
	link->connect_poll = PGRES_POLLING_WRITING; /* libpq: as if PQconnectPoll had just asked for writing */
}

static bool send_command(struct fo_pglink *link, enum command command, const char *product_id,
		const char *device_name)
{
	const char *params[2];
	int sent;

	switch(command){
		case CMD_LISTEN:
			sent = PQsendQuery(link->conn, "LISTEN " FO_NOTIFY_CHANNEL);
			break;
		case CMD_PREPARE_DEVICE:
			sent = PQsendPrepare(link->conn, DEVICE_STATEMENT, DEVICE_SQL, 2, NULL);
			break;
		case CMD_PREPARE_SERVICE:
			sent = PQsendPrepare(link->conn, SERVICE_STATEMENT, SERVICE_SQL, 1, NULL);
			break;
		case CMD_SERVICE:
			params[0] = link->service_name;
			sent = PQsendQueryPrepared(link->conn, SERVICE_STATEMENT, 1, params, NULL, NULL, 0);
			break;
		case CMD_DEVICE:
			params[0] = product_id;
			params[1] = device_name;
			sent = PQsendQueryPrepared(link->conn, DEVICE_STATEMENT, 2, params, NULL, NULL, 0);
			break;
		default:
			sent = 0;
			break;
	}
	if(!sent){
		drop(link, "cannot send a command");
		return false;
	}
	link->busy = command;
	link->command_failed = false;
	return true;
}

static void handle_result(struct fo_pglink *link, PGresult *result)
{
	ExecStatusType status = PQresultStatus(result);
	bool rows = link->busy == CMD_SERVICE || link->busy == CMD_DEVICE;

	if(status != (rows ? PGRES_TUPLES_OK : PGRES_COMMAND_OK)){
		link->command_failed = true;
		first_line(link->command_error, sizeof(link->command_error), PQresultErrorMessage(result));
		return;
	}
	if(link->busy == CMD_SERVICE){
		char secret[SERVICE_SECRET_MAX + 1];
		const char *value = PQntuples(result) == 1 ? PQgetvalue(result, 0, 0) : NULL;

		if(value != NULL && strlen(value) <= SERVICE_SECRET_MAX){
			strcpy(secret, value);
			link->events.service_secret(link->events.context, secret);
			memset(secret, 0, sizeof(secret));
		}else{
			link->events.service_secret(link->events.context, NULL);
		}
	}else if(link->busy == CMD_DEVICE && link->lookup_out != NULL){
		if(PQntuples(result) == 1){
			const char *psk = PQgetvalue(result, 0, 0);
			size_t length = strlen(psk);

			if(length <= FO_PSK_MAX_CHARS){
				memcpy(link->lookup_out->psk, psk, length + 1);
				link->lookup_out->psk_valid = true;
			}
			link->lookup_out->enabled = strcmp(PQgetvalue(result, 0, 1), "t") == 0;
			link->lookup_result = FO_LOOKUP_FOUND;
		}else{
			link->lookup_result = FO_LOOKUP_NOT_FOUND;
		}
	}
}

/* The command's last result has arrived. */
static void command_done(struct fo_pglink *link)
{
	enum command done = link->busy;

	link->busy = CMD_NONE;
	if(link->command_failed){
		char why[260];
		snprintf(why, sizeof(why), "%s (is the schema migrated? run fleetops db upgrade)", link->command_error);
		drop(link, why);
		return;
	}
	if(link->state != LINK_SETUP){
		return;
	}
	switch(done){
		case CMD_LISTEN:
			send_command(link, CMD_PREPARE_DEVICE, NULL, NULL);
			break;
		case CMD_PREPARE_DEVICE:
			send_command(link, CMD_PREPARE_SERVICE, NULL, NULL);
			break;
		case CMD_PREPARE_SERVICE:
			link->service_reload = false;
			send_command(link, CMD_SERVICE, NULL, NULL);
			break;
		default:
			link->state = LINK_READY;
			link->cache_trusted = true;
			link->backoff_ms = BACKOFF_MIN_MS;
			link->unavailable_logged = false;
			fo_log(MOSQ_LOG_NOTICE, "database link ready (listening on %s)", FO_NOTIFY_CHANNEL);
			break;
	}
}

/* Wait until the socket is ready for events or deadline_ms passes; false on timeout. */
static bool wait_socket(struct fo_pglink *link, short events, int64_t deadline_ms)
{
	struct pollfd fd = {.fd = PQsocket(link->conn), .events = events};
	int64_t remaining = deadline_ms - fo_monotonic_ms();
	int rc;

	if(fd.fd < 0){
		return true; /* let libpq report the failure */
	}
	do{
		rc = poll(&fd, 1, remaining > 0 ? (int)remaining : 0);
	}while(rc < 0 && errno == EINTR);
	return rc != 0;
}

/* Drive the link until it is ready and idle, it is down (waiting for its next attempt), or deadline_ms passes.
 * background: also start the service secret reload that a notification asked for. */
static void progress(struct fo_pglink *link, int64_t deadline_ms, bool background)
{
	for(;;){
		int64_t now = fo_monotonic_ms();

		switch(link->state){
			case LINK_DOWN:
				if(now < link->next_attempt_ms){
					return;
				}
				start_connect(link);
				continue;
			case LINK_CONNECTING:
				if(now - link->attempt_started_ms > CONNECT_TIMEOUT_MS){
					drop(link, "connection attempt timed out");
					continue;
				}
				if(!wait_socket(link, link->connect_poll == PGRES_POLLING_READING ? POLLIN : POLLOUT,
							deadline_ms)){
					return;
				}
				link->connect_poll = PQconnectPoll(link->conn);
				if(link->connect_poll == PGRES_POLLING_OK){
					PQsetnonblocking(link->conn, 1);
					link->state = LINK_SETUP;
					send_command(link, CMD_LISTEN, NULL, NULL);
				}else if(link->connect_poll == PGRES_POLLING_FAILED){
					drop(link, "connection failed");
				}
				continue;
			case LINK_SETUP:
			case LINK_READY: {
				int flushed;

				if(link->state == LINK_SETUP && now - link->attempt_started_ms > CONNECT_TIMEOUT_MS){
					drop(link, "connection setup timed out");
					continue;
				}
				if(link->busy == CMD_NONE){
					if(background && link->service_reload){
						link->service_reload = false;
						send_command(link, CMD_SERVICE, NULL, NULL);
						continue;
					}
					return;
				}
				flushed = PQflush(link->conn);
				if(flushed < 0){
					drop(link, "cannot send");
					continue;
				}
				if(flushed == 1){
					if(!wait_socket(link, POLLOUT, deadline_ms)){
						return;
					}
					continue;
				}
				if(!PQconsumeInput(link->conn)){
					drop(link, "connection closed");
					continue;
				}
				while(link->busy != CMD_NONE && !PQisBusy(link->conn)){
					PGresult *result = PQgetResult(link->conn);
					if(result == NULL){
						command_done(link);
						break;
					}
					handle_result(link, result);
					PQclear(result);
				}
				if(link->busy != CMD_NONE && PQisBusy(link->conn) && !wait_socket(link, POLLIN, deadline_ms)){
					return;
				}
				continue;
			}
		}
	}
}

static void deliver_notifications(struct fo_pglink *link)
{
	PGnotify *notify;

	if(link->conn == NULL || link->state == LINK_DOWN || link->state == LINK_CONNECTING){
		return;
	}
	if(link->busy == CMD_NONE && !PQconsumeInput(link->conn)){
		drop(link, "connection closed");
		return;
	}
	while(link->conn != NULL && (notify = PQnotifies(link->conn)) != NULL){
		const char *extra = notify->extra ? notify->extra : "";

		if(strcmp(notify->relname, FO_NOTIFY_CHANNEL) == 0){
			if(strncmp(extra, "device ", 7) == 0){
				link->events.device_changed(link->events.context, extra + 7);
			}else if(strncmp(extra, "credential ", 11) == 0 && strcmp(extra + 11, link->service_name) == 0){
				link->service_reload = true;
			}
		}
		PQfreemem(notify);
	}
}

bool fo_pglink_start(struct fo_pglink *link, int64_t deadline_ms)
{
	link->next_attempt_ms = 0;
	progress(link, deadline_ms, false);
	return link->state == LINK_READY;
}

void fo_pglink_tick(struct fo_pglink *link)
{
	progress(link, 0, true);
	deliver_notifications(link);
}

enum fo_lookup fo_pglink_lookup(struct fo_pglink *link, const char *product_id, const char *device_name,
		struct fo_credentials *out)
{
	int64_t deadline = fo_monotonic_ms() + link->lookup_timeout_ms;

	/* Finish what is in flight (setup, a service secret read) first. A down link waiting for its next attempt
	 * answers at once, and only one CONNECT per connection attempt waits for a database that does not answer:
	 * during an outage CONNECTs do not each stall the broker. */
	if((link->state == LINK_CONNECTING || link->state == LINK_SETUP) && link->attempt_waited){
		return FO_LOOKUP_UNAVAILABLE;
	}
	progress(link, deadline, false);
	if(link->state == LINK_CONNECTING || link->state == LINK_SETUP){
		link->attempt_waited = true;
	}
	if(link->state != LINK_READY || link->busy != CMD_NONE){
		return FO_LOOKUP_UNAVAILABLE;
	}
	memset(out, 0, sizeof(*out));
	link->lookup_out = out;
	link->lookup_result = FO_LOOKUP_NOT_FOUND;
	if(!send_command(link, CMD_DEVICE, product_id, device_name)){
		link->lookup_out = NULL;
		return FO_LOOKUP_UNAVAILABLE;
	}
	progress(link, deadline, false);
	link->lookup_out = NULL;
	if(link->state == LINK_READY && link->busy == CMD_NONE){
		return link->lookup_result;
	}
	if(link->busy == CMD_DEVICE){
		char why[80];
		snprintf(why, sizeof(why), "no answer to a credential lookup within %lld ms",
				(long long)link->lookup_timeout_ms);
		drop(link, why);
	}
	return FO_LOOKUP_UNAVAILABLE;
}
