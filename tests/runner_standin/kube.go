package main

// A Kubernetes API client in net/http and encoding/json, standing in for client-go where the kubernetes
// executor (executors/kubernetes at v18.9.0) uses it: the connection settings of getKubeClientConfig
// (in-cluster, else [runners.kubernetes] host with bearer_token or cert_file/key_file and ca_file),
// JSON requests whose errors carry the API's Status message (a 403 reads as client-go prints it:
// `pods is forbidden: User "system:serviceaccount:…" cannot create resource "pods" …`), watch streams,
// and exec/attach streams. client-go runs exec and attach over SPDY (POST, authorized as `create` on
// pods/exec and pods/attach); net/http has no SPDY, so this client uses the API server's WebSocket
// protocol v5.channel.k8s.io for the same subresources (what kubectl 1.30+ uses; a GET upgrade, which
// the API server authorizes as `get`, and also as `create` where AuthorizePodWebsocketUpgradeCreatePermission
// is on, the default from Kubernetes 1.35).

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// serviceAccountDir is where a pod finds its service account's token, CA and namespace.
var serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

type kubeClient struct {
	base  string
	http  *http.Client
	token func() (string, error)
}

// kubeAPIError is a failed request: the API's Status (client-go's StatusError prints its message).
type kubeAPIError struct {
	Code    int
	Reason  string
	Message string
}

func (e *kubeAPIError) Error() string { return e.Message }

func isNotFound(err error) bool {
	var apiErr *kubeAPIError
	return errors.As(err, &apiErr) && apiErr.Code == http.StatusNotFound
}

func isConflict(err error) bool {
	var apiErr *kubeAPIError
	return errors.As(err, &apiErr) && apiErr.Code == http.StatusConflict
}

// newKubeClient is getKubeClientConfig: [runners.kubernetes] host when set (bearer_token, ca_file,
// cert_file + key_file), else the pod's in-cluster configuration. (The real one falls back to the
// default kubectl config outside a cluster; this double does not.)
func newKubeClient(settings kubeSettings) (*kubeClient, error) {
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	client := &kubeClient{}
	caFile := settings.str("ca_file")
	if host := settings.str("host"); host != "" {
		if !strings.Contains(host, "://") {
			host = "https://" + host
		}
		client.base = strings.TrimRight(host, "/")
		bearer := settings.str("bearer_token")
		client.token = func() (string, error) { return bearer, nil }
		if certFile := settings.str("cert_file"); certFile != "" {
			keyFile := settings.str("key_file")
			if keyFile == "" || caFile == "" {
				return nil, fmt.Errorf("ca file, cert file and key file must be specified when using file based auth")
			}
			pair, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return nil, err
			}
			tlsConfig.Certificates = []tls.Certificate{pair}
		}
	} else {
		host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
		if host == "" || port == "" {
			return nil, fmt.Errorf("unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be defined")
		}
		client.base = "https://" + net.JoinHostPort(host, port)
		tokenFile := filepath.Join(serviceAccountDir, "token")
		if _, err := os.ReadFile(tokenFile); err != nil {
			return nil, err
		}
		// Projected tokens are rotated by the kubelet: read the file for each request, as client-go
		// re-reads it.
		client.token = func() (string, error) {
			data, err := os.ReadFile(tokenFile)
			return strings.TrimSpace(string(data)), err
		}
		caFile = filepath.Join(serviceAccountDir, "ca.crt")
		if _, err := os.Stat(caFile); err != nil {
			logf("ERROR", "Expected to load root CA config from %s, but got err: %v", caFile, err)
			caFile = ""
		}
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("no certificate in %s", caFile)
		}
		tlsConfig.RootCAs = pool
	}
	client.http = &http.Client{Transport: &http.Transport{
		Proxy:           http.ProxyFromEnvironment,
		TLSClientConfig: tlsConfig,
		// HTTP/1.1 only: exec and attach are protocol upgrades, which HTTP/2 cannot carry.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
	return client, nil
}

func (k *kubeClient) request(ctx context.Context, method, path string, query url.Values, body any) (*http.Request, error) {
	request, err := jsonRequest(ctx, method, k.base+path, query, body)
	if err != nil {
		return nil, err
	}
	request.Header.Set("Accept", "application/json")
	request.Header.Set("User-Agent", fmt.Sprintf("gitlab-runner %s (standin; go; linux/amd64)", version))
	token, err := k.token()
	if err != nil {
		return nil, err
	}
	if token != "" {
		request.Header.Set("Authorization", "Bearer "+token)
	}
	return request, nil
}

// open sends one request and returns the answer of a 2xx, else the API's error.
func (k *kubeClient) open(ctx context.Context, method, path string, query url.Values, body any) (*http.Response, error) {
	request, err := k.request(ctx, method, path, query, body)
	if err != nil {
		return nil, err
	}
	answer, err := k.http.Do(request)
	if err != nil {
		return nil, err
	}
	if answer.StatusCode/100 != 2 {
		defer answer.Body.Close()
		return nil, apiError(answer)
	}
	return answer, nil
}

func apiError(answer *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(answer.Body, 64<<10))
	var status struct {
		Message string `json:"message"`
		Reason  string `json:"reason"`
	}
	if json.Unmarshal(data, &status) != nil || status.Message == "" {
		status.Message = fmt.Sprintf("the server responded with the status code %d but did not return more information (%s)",
			answer.StatusCode, strings.TrimSpace(string(data)))
	}
	return &kubeAPIError{Code: answer.StatusCode, Reason: status.Reason, Message: status.Message}
}

// call makes one JSON request; out (if any) receives the answer.
func (k *kubeClient) call(ctx context.Context, method, path string, query url.Values, body, out any) error {
	answer, err := k.open(ctx, method, path, query, body)
	if err != nil {
		return err
	}
	defer answer.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, answer.Body)
		return err
	}
	return json.NewDecoder(answer.Body).Decode(out)
}

// allowed asks the API server whether this client may use a verb on a resource
// (SelfSubjectAccessReview), as the executor's feature checker does before it starts informers.
func (k *kubeClient) allowed(ctx context.Context, namespace, verb, resource string) (bool, string, error) {
	review := map[string]any{
		"apiVersion": "authorization.k8s.io/v1",
		"kind":       "SelfSubjectAccessReview",
		"spec": map[string]any{"resourceAttributes": map[string]any{
			"namespace": namespace, "verb": verb, "group": "", "version": "v1", "resource": resource,
		}},
	}
	var answer struct {
		Status struct {
			Allowed         bool   `json:"allowed"`
			Denied          bool   `json:"denied"`
			Reason          string `json:"reason"`
			EvaluationError string `json:"evaluationError"`
		} `json:"status"`
	}
	if err := k.call(ctx, http.MethodPost, "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", nil, review, &answer); err != nil {
		return false, "", fmt.Errorf("SelfSubjectAccessReview creation: %w", err)
	}
	if answer.Status.EvaluationError != "" {
		return false, "SelfSubjectAccessReview evaluation error: " + answer.Status.EvaluationError, nil
	}
	if answer.Status.Allowed && !answer.Status.Denied {
		return true, "", nil
	}
	reason := fmt.Sprintf("not allowed: %s on %s", verb, resource)
	if answer.Status.Reason != "" {
		reason += " (reason: " + answer.Status.Reason + ")"
	}
	return false, reason, nil
}

// The WebSocket side of exec and attach: RFC 6455 frames carrying the channel protocol
// v5.channel.k8s.io (each binary message starts with its stream: 0 stdin, 1 stdout, 2 stderr, 3 the
// error stream with the final Status; 255 closes the stream named by the next byte).
const (
	channelProtocol = "v5.channel.k8s.io"
	streamStdin     = 0
	streamStdout    = 1
	streamStderr    = 2
	streamError     = 3
	streamClose     = 255

	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

const websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func websocketAccept(key string) string {
	sum := sha1.Sum([]byte(key + websocketGUID))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// writeFrame writes one final frame; a client masks its frames, a server does not.
func writeFrame(w io.Writer, op byte, payload []byte, mask bool) error {
	header := []byte{0x80 | op, 0}
	var maskBit byte
	if mask {
		maskBit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		header[1] = maskBit | byte(n)
	case n <= 0xFFFF:
		header[1] = maskBit | 126
		header = binary.BigEndian.AppendUint16(header, uint16(n))
	default:
		header[1] = maskBit | 127
		header = binary.BigEndian.AppendUint64(header, uint64(n))
	}
	data := payload
	if mask {
		key := make([]byte, 4)
		if _, err := rand.Read(key); err != nil {
			return err
		}
		header = append(header, key...)
		data = make([]byte, len(payload))
		for i := range payload {
			data[i] = payload[i] ^ key[i%4]
		}
	}
	_, err := w.Write(append(header, data...))
	return err
}

// readFrame reads one frame, unmasking it when it is masked.
func readFrame(r *bufio.Reader) (fin bool, op byte, payload []byte, err error) {
	head := make([]byte, 2)
	if _, err = io.ReadFull(r, head); err != nil {
		return
	}
	fin, op = head[0]&0x80 != 0, head[0]&0x0F
	length := uint64(head[1] & 0x7F)
	switch length {
	case 126:
		var n uint16
		err = binary.Read(r, binary.BigEndian, &n)
		length = uint64(n)
	case 127:
		err = binary.Read(r, binary.BigEndian, &length)
	}
	if err != nil {
		return
	}
	if length > 64<<20 {
		return false, 0, nil, fmt.Errorf("websocket frame of %d bytes", length)
	}
	var key []byte
	if head[1]&0x80 != 0 {
		key = make([]byte, 4)
		if _, err = io.ReadFull(r, key); err != nil {
			return
		}
	}
	payload = make([]byte, length)
	if _, err = io.ReadFull(r, payload); err != nil {
		return
	}
	if key != nil {
		for i := range payload {
			payload[i] ^= key[i%4]
		}
	}
	return
}

// channelConn is one exec or attach stream.
type channelConn struct {
	conn   io.ReadWriteCloser
	reader *bufio.Reader
	mask   bool
	wmu    sync.Mutex
	once   sync.Once
	done   chan struct{}
}

func newChannelConn(conn io.ReadWriteCloser, reader *bufio.Reader, mask bool) *channelConn {
	return &channelConn{conn: conn, reader: reader, mask: mask, done: make(chan struct{})}
}

func (c *channelConn) writeFrame(op byte, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return writeFrame(c.conn, op, payload, c.mask)
}

// send writes data on a stream.
func (c *channelConn) send(stream byte, data []byte) error {
	return c.writeFrame(opBinary, append([]byte{stream}, data...))
}

// closeStream half-closes a stream (stdin: the remote process reads EOF).
func (c *channelConn) closeStream(stream byte) error {
	return c.send(streamClose, []byte{stream})
}

// receive returns the next message's stream and data, answering pings; io.EOF when the peer closes.
func (c *channelConn) receive() (byte, []byte, error) {
	var message []byte
	for {
		fin, op, payload, err := readFrame(c.reader)
		if err != nil {
			return 0, nil, err
		}
		switch op {
		case opPing:
			_ = c.writeFrame(opPong, payload)
			continue
		case opPong:
			continue
		case opClose:
			_ = c.writeFrame(opClose, payload)
			return 0, nil, io.EOF
		case opText, opBinary, opContinuation:
			message = append(message, payload...)
		}
		if !fin {
			continue
		}
		if len(message) <= 1 {
			// A stream's empty "ready" message carries no data.
			message = nil
			continue
		}
		return message[0], message[1:], nil
	}
}

func (c *channelConn) Close() error {
	var err error
	c.once.Do(func() {
		close(c.done)
		_ = c.writeFrame(opClose, []byte{0x03, 0xE8})
		err = c.conn.Close()
	})
	return err
}

// openChannels opens an exec or attach stream: a WebSocket upgrade of a GET on the subresource.
func (k *kubeClient) openChannels(ctx context.Context, path string, query url.Values) (*channelConn, error) {
	request, err := k.request(ctx, http.MethodGet, path, query, nil)
	if err != nil {
		return nil, err
	}
	raw := make([]byte, 16)
	if _, err := rand.Read(raw); err != nil {
		return nil, err
	}
	key := base64.StdEncoding.EncodeToString(raw)
	// An upgrade names no representation: the API server answers one that asks for JSON with 406.
	request.Header.Del("Accept")
	request.Header.Set("Connection", "Upgrade")
	request.Header.Set("Upgrade", "websocket")
	request.Header.Set("Sec-WebSocket-Version", "13")
	request.Header.Set("Sec-WebSocket-Key", key)
	request.Header.Set("Sec-WebSocket-Protocol", channelProtocol)
	answer, err := k.http.Do(request)
	if err != nil {
		return nil, err
	}
	if answer.StatusCode != http.StatusSwitchingProtocols {
		defer answer.Body.Close()
		return nil, apiError(answer)
	}
	conn, ok := answer.Body.(io.ReadWriteCloser)
	switch {
	case !ok:
		answer.Body.Close()
		return nil, fmt.Errorf("the API server's upgrade gave no connection")
	case answer.Header.Get("Sec-WebSocket-Accept") != websocketAccept(key):
		conn.Close()
		return nil, fmt.Errorf("the API server's WebSocket handshake did not answer the key")
	case answer.Header.Get("Sec-WebSocket-Protocol") != channelProtocol:
		conn.Close()
		return nil, fmt.Errorf("the API server does not speak %s (it chose %q)", channelProtocol, answer.Header.Get("Sec-WebSocket-Protocol"))
	}
	channels := newChannelConn(conn, bufio.NewReader(conn), true)
	go func() {
		select {
		case <-ctx.Done():
			channels.Close()
		case <-channels.done:
		}
	}()
	return channels, nil
}

// streamStatus reads a stream to its end: stdout and stderr into the writers (nil discards), then the
// remote command's exit code from the error stream's Status (client-go's remotecommand: Success is 0,
// NonZeroExitCode carries the code in details.causes, any other Failure is an error).
func (c *channelConn) streamStatus(stdout, stderr io.Writer) (int, error) {
	for {
		stream, data, err := c.receive()
		if errors.Is(err, io.EOF) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		switch stream {
		case streamStdout:
			if stdout != nil {
				_, _ = stdout.Write(data)
			}
		case streamStderr:
			if stderr != nil {
				_, _ = stderr.Write(data)
			}
		case streamError:
			return remoteStatus(data)
		}
	}
}

func remoteStatus(data []byte) (int, error) {
	var status struct {
		Status  string `json:"status"`
		Message string `json:"message"`
		Reason  string `json:"reason"`
		Details struct {
			Causes []struct {
				Reason  string `json:"reason"`
				Message string `json:"message"`
			} `json:"causes"`
		} `json:"details"`
	}
	if err := json.Unmarshal(data, &status); err != nil {
		return 0, fmt.Errorf("error stream: %s", strings.TrimSpace(string(data)))
	}
	if status.Status == "Success" {
		return 0, nil
	}
	if status.Reason == "NonZeroExitCode" {
		for _, cause := range status.Details.Causes {
			if cause.Reason == "ExitCode" {
				if code, err := strconv.Atoi(cause.Message); err == nil {
					return code, nil
				}
			}
		}
	}
	return 0, errors.New(status.Message)
}

// exec runs a command in a container (pods/exec), stdin (if any) written and closed, and returns its
// exit code.
func (k *kubeClient) exec(ctx context.Context, namespace, pod, container string, command []string, stdin []byte, stdout, stderr io.Writer) (int, error) {
	query := url.Values{"container": {container}, "command": command}
	if stdin != nil {
		query.Set("stdin", "true")
	}
	if stdout != nil {
		query.Set("stdout", "true")
	}
	if stderr != nil {
		query.Set("stderr", "true")
	}
	conn, err := k.openChannels(ctx, podPath(namespace, pod)+"/exec", query)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if stdin != nil {
		if err := conn.send(streamStdin, stdin); err != nil {
			return 0, err
		}
		if err := conn.closeStream(streamStdin); err != nil {
			return 0, err
		}
	}
	return conn.streamStatus(stdout, stderr)
}

// attach writes a line to a container's stdin (pods/attach with stdin only, as AttachOptions.Run
// does) and waits for the attach to end.
func (k *kubeClient) attach(ctx context.Context, namespace, pod, container string, line string) error {
	query := url.Values{"container": {container}, "stdin": {"true"}}
	conn, err := k.openChannels(ctx, podPath(namespace, pod)+"/attach", query)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.send(streamStdin, []byte(line)); err != nil {
		return err
	}
	if err := conn.closeStream(streamStdin); err != nil {
		return err
	}
	_, err = conn.streamStatus(nil, nil)
	return err
}

func podPath(namespace, pod string) string {
	return "/api/v1/namespaces/" + url.PathEscape(namespace) + "/pods/" + url.PathEscape(pod)
}
