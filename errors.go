package main

import (
	"errors"
	"fmt"
	"net/http"
)

// errKind says what kind of failure an error is, in terms a caller can act
// on. Lower layers attach a kind; only the HTTP and gRPC layers turn kinds
// into their own status codes.
type errKind uint8

const (
	kindInternal     errKind = iota // a bug in the sidecar
	kindInvalid                     // the caller's request is malformed
	kindDenied                      // a service refused, a policy was not met, or a response failed verification
	kindUpstream                    // a service failed, answered garbage, or could not be reached
	kindUnavailable                 // no SEV-SNP guest interface
	kindTimeout                     // a deadline ran out
	kindNoRoute                     // HTTP only: no such endpoint
	kindBadMethod                   // HTTP only: wrong method for the endpoint
	kindUnsupported                 // the call or its encoding is not offered
	kindTooLarge                    // a message over this server's bound
	kindPrecondition                // well-formed, but what it names cannot serve the call
	kindProtocol                    // a caller broke the wire protocol's framing
)

// kindError is an error with a kind. Its message is written for the user:
// what failed, at which step, and what to do about it.
type kindError struct {
	Kind errKind
	Msg  string
	Err  error
}

func (e *kindError) Error() string {
	if e.Err == nil {
		return e.Msg
	}
	return e.Msg + ": " + e.Err.Error()
}

func (e *kindError) Unwrap() error { return e.Err }

// newError wraps err with a kind and a user-facing message.
func newError(kind errKind, err error, format string, args ...any) *kindError {
	return &kindError{Kind: kind, Msg: fmt.Sprintf(format, args...), Err: err}
}

// errorKind classifies any error: the outermost kindError decides, then
// deadlines, then a service's own refusal or failure.
func errorKind(err error) errKind {
	var ke *kindError
	if errors.As(err, &ke) {
		return ke.Kind
	}
	if isTimeout(err) {
		return kindTimeout
	}
	var ue *upstreamError
	if errors.As(err, &ue) {
		if ue.StatusCode == http.StatusUnauthorized || ue.StatusCode == http.StatusForbidden {
			return kindDenied
		}
		return kindUpstream
	}
	return kindInternal
}
