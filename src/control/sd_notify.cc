// Placeholder; see the header.
#include "control/sd_notify.h"
