package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// The Unix-socket listener: beside or instead of TCP, a socket file a pod
// can hand to one container only, through a volume shared with it. Its
// mode (0660) lets the file's owner and group open it; the peer
// credentials of each connection narrow it to the listed user ids.

// socketMode is the mode of the socket file: the owner and the group.
const socketMode fs.FileMode = 0o660

// listenUnix listens at path, replacing a socket an earlier run left
// behind; anything else at path is refused. The socket is made in a
// private folder beside path, given its mode there and then moved into
// place, so that it is never open to others, not even for a moment.
func listenUnix(path string) (net.Listener, error) {
	if info, err := os.Lstat(path); err == nil && info.Mode().Type() != fs.ModeSocket {
		return nil, fmt.Errorf("listen on %s: it exists and is not a socket", path)
	}
	private, err := os.MkdirTemp(filepath.Dir(path), ".skr-socket-")
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	defer os.RemoveAll(private)
	tmp := filepath.Join(private, "s")
	l, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, socketMode); err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return &peerListener{Listener: l, addr: &net.UnixAddr{Name: path, Net: "unix"}}, nil
}

// peerListener hands out connections that know their peer's credentials,
// and removes the socket file when closed.
type peerListener struct {
	net.Listener
	addr *net.UnixAddr
}

func (l *peerListener) Addr() net.Addr { return l.addr }

func (l *peerListener) Close() error {
	err := l.Listener.Close()
	os.Remove(l.addr.Name)
	return err
}

// peerConn is a connection on the socket and its peer's user id, read when
// it was accepted (or why it could not be).
type peerConn struct {
	net.Conn
	uid    uint32
	uidErr error
}

func (l *peerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	pc := &peerConn{Conn: c}
	pc.uid, pc.uidErr = peerUID(c)
	return pc, nil
}

// peerUID is SO_PEERCRED's uid: who connected, as the kernel saw it.
func peerUID(c net.Conn) (uint32, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, errors.New("not a Unix socket connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, fmt.Errorf("read peer credentials: %w", credErr)
	}
	return cred.Uid, nil
}

type peerConnKey struct{}

// withPeer is the http.Server's ConnContext: a request on the socket can
// find its connection's peer.
func withPeer(ctx context.Context, c net.Conn) context.Context {
	if pc, ok := c.(*peerConn); ok {
		return context.WithValue(ctx, peerConnKey{}, pc)
	}
	return ctx
}

// permitPeers refuses, with 403, requests on the socket from a user id that
// uids does not list; nil uids permits every peer.
func permitPeers(uids []uint32, next http.Handler) http.Handler {
	if uids == nil {
		return next
	}
	list := make([]string, len(uids))
	for i, u := range uids {
		list[i] = strconv.FormatUint(uint64(u), 10)
	}
	allowed := strings.Join(list, ", ")
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pc, _ := r.Context().Value(peerConnKey{}).(*peerConn)
		switch {
		case pc == nil: // TCP
		case pc.uidErr != nil:
			writeError(w, newError(kindDenied, pc.uidErr, "the socket's peer is unknown, and -socket-uids allows only %s", allowed))
			return
		case !slices.Contains(uids, pc.uid):
			writeError(w, newError(kindDenied, nil, "user id %d may not use this socket: -socket-uids allows %s", pc.uid, allowed))
			return
		}
		next.ServeHTTP(w, r)
	})
}
