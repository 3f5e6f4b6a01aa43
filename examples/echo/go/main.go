// Command echo is a Lambda runtime that talks to the Lambda Runtime API
// directly and returns every event unchanged.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"time"
)

const apiVersion = "2018-06-01"

// invocation is one event fetched from /runtime/invocation/next.
type invocation struct {
	requestID   string
	deadline    time.Time
	functionARN string
	traceID     string
	payload     []byte
}

type runtimeClient struct {
	baseURL string
	// No timeout: /next is a long poll that blocks until an event arrives.
	http *http.Client
}

func newRuntimeClient(api string) *runtimeClient {
	return &runtimeClient{
		baseURL: "http://" + api + "/" + apiVersion + "/runtime",
		http:    &http.Client{},
	}
}

func (c *runtimeClient) next() (*invocation, error) {
	resp, err := c.http.Get(c.baseURL + "/invocation/next")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("next: %s: %s", resp.Status, body)
	}
	inv := &invocation{
		requestID:   resp.Header.Get("Lambda-Runtime-Aws-Request-Id"),
		functionARN: resp.Header.Get("Lambda-Runtime-Invoked-Function-Arn"),
		traceID:     resp.Header.Get("Lambda-Runtime-Trace-Id"),
		payload:     body,
	}
	if inv.requestID == "" {
		return nil, fmt.Errorf("next: response has no Lambda-Runtime-Aws-Request-Id")
	}
	if ms, err := strconv.ParseInt(resp.Header.Get("Lambda-Runtime-Deadline-Ms"), 10, 64); err == nil {
		inv.deadline = time.UnixMilli(ms)
	}
	return inv, nil
}

func (c *runtimeClient) post(path string, body []byte, header http.Header) error {
	req, err := http.NewRequest(http.MethodPost, c.baseURL+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("POST %s: %s: %s", path, resp.Status, msg)
	}
	return nil
}

func (c *runtimeClient) respond(requestID string, payload []byte) error {
	return c.post("/invocation/"+requestID+"/response", payload, nil)
}

func (c *runtimeClient) reportError(requestID string, handlerErr error) error {
	errType := errorType(handlerErr)
	body, err := json.Marshal(map[string]string{
		"errorMessage": handlerErr.Error(),
		"errorType":    errType,
	})
	if err != nil {
		return err
	}
	header := http.Header{}
	header.Set("Lambda-Runtime-Function-Error-Type", errType)
	return c.post("/invocation/"+requestID+"/error", body, header)
}

// errorType names an error the way Lambda reports it, e.g. "errorString"
// for errors.New.
func errorType(err error) string {
	t := reflect.TypeOf(err)
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Name() == "" {
		return "Function.Error"
	}
	return t.Name()
}

// echo returns the event unchanged. Setting ECHO_ERROR_MESSAGE makes it fail
// instead, so that the error path of a Runtime API server can be tested.
func echo(ctx context.Context, event []byte) ([]byte, error) {
	if msg := os.Getenv("ECHO_ERROR_MESSAGE"); msg != "" {
		return nil, errors.New(msg)
	}
	return event, nil
}

// invoke runs the handler, turning a panic into an error so that one bad
// event does not take the whole runtime down.
func invoke(ctx context.Context, payload []byte) (result []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	return echo(ctx, payload)
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("echo: ")

	api := os.Getenv("AWS_LAMBDA_RUNTIME_API")
	if api == "" {
		log.Fatal("AWS_LAMBDA_RUNTIME_API is not set; this program must be started by a Lambda runtime API server")
	}
	client := newRuntimeClient(api)

	for {
		inv, err := client.next()
		if err != nil {
			log.Fatal(err)
		}
		os.Setenv("_X_AMZN_TRACE_ID", inv.traceID)
		log.Printf("request %s for %s", inv.requestID, inv.functionARN)

		ctx, cancel := context.Background(), context.CancelFunc(func() {})
		if !inv.deadline.IsZero() {
			ctx, cancel = context.WithDeadline(ctx, inv.deadline)
		}
		result, handlerErr := invoke(ctx, inv.payload)
		cancel()

		if handlerErr != nil {
			err = client.reportError(inv.requestID, handlerErr)
		} else {
			err = client.respond(inv.requestID, result)
		}
		if err != nil {
			log.Fatal(err)
		}
	}
}
