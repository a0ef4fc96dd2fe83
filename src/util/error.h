/*
 * error: the type names a tether_error carries for failures that are not a remote
 * exception. They and the codes they stand for live in one table (error.c), which
 * tether_strerror(), tether_err_name(), tether_err_type() and tether_err_code() read;
 * these names are for the places that need one type among several of a code.
 *
 * The protocol itself sends the ones marked "wire" (docs/protocol.md, "Errors"); a
 * response carrying one completes the call with its code (tether_err_code()).
 */
#ifndef TETHER_UTIL_ERROR_H
#define TETHER_UTIL_ERROR_H

#define TETHER__ERR_GENERIC "tether.Error"
#define TETHER__ERR_INVALID_ARGUMENT "tether.InvalidArgument"
#define TETHER__ERR_INVALID_ADDRESS "tether.InvalidAddress"
#define TETHER__ERR_PROTOCOL "tether.ProtocolError"
#define TETHER__ERR_OVERLOADED "tether.Overloaded"
#define TETHER__ERR_TIMEOUT "tether.Timeout"
#define TETHER__ERR_CONNECTION_LOST "tether.ConnectionLost"
#define TETHER__ERR_NOT_CONNECTED "tether.NotConnected"
#define TETHER__ERR_CONNECTION_REFUSED "tether.ConnectionRefused"
#define TETHER__ERR_REFUSED "tether.Refused"
#define TETHER__ERR_TOO_DEEP "tether.TooDeep"
#define TETHER__ERR_SPAWN "tether.SpawnError"
/* wire */
#define TETHER__ERR_NO_SUCH_SERVICE "tether.NoSuchService"
#define TETHER__ERR_NO_SUCH_OBJECT "tether.NoSuchObject"
#define TETHER__ERR_MESSAGE_TOO_LARGE "tether.MessageTooLarge"
#define TETHER__ERR_TOO_MANY_REQUESTS "tether.TooManyRequests"
#define TETHER__ERR_CANCELLED "tether.Cancelled"
#define TETHER__ERR_CLOSING "tether.Closing"

#endif
