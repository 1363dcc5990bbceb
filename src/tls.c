/* placeholder, being written */
#include "relabel/errors.h"
