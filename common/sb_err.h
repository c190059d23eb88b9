/* Error codes shared by every snapbus module: the same codes the client
 * library returns, so they are defined once, in the public header. */
#ifndef SB_ERR_H
#define SB_ERR_H

#include <snapbus/snapbus_common.h>

#endif
