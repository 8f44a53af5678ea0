/* fo_log (log.h). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>

#include <mosquitto_broker.h>

void fo_log(int level, const char *format, ...)
{
	char line[512]; /* longer lines are cut: every field we log is bounded or cut with %.Ns */
	va_list args;

	va_start(args, format);
	vsnprintf(line, sizeof(line), format, args);
	va_end(args);
	mosquitto_log_printf(level, "fleetops: %s", line);
}
