// Placeholder; see the header.
#include "control/metrics.h"
