// Command hostile is a static Lambda runtime for scratch roots (no shell, no libc).
// The event's "action" picks what it does: "echo" (default) returns the event,
// "sleep" outlasts any timeout, "crash" exits with status 3, and "orphan" leaves a
// grandchild behind (its parent exits at once) and returns the grandchild's pid.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		helper(os.Args[1])
		return
	}
	base := "http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API") + "/2018-06-01/runtime/invocation/"
	for {
		resp, err := http.Get(base + "next")
		if err != nil {
			os.Exit(1)
		}
		event, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		id := resp.Header.Get("Lambda-Runtime-Aws-Request-Id")
		result := handle(event)
		post, err := http.Post(base+id+"/response", "application/json", bytes.NewReader(result))
		if err != nil {
			os.Exit(1)
		}
		post.Body.Close()
	}
}

func handle(event []byte) []byte {
	var request struct{ Action string }
	_ = json.Unmarshal(event, &request)
	switch request.Action {
	case "sleep":
		time.Sleep(time.Hour)
	case "crash":
		os.Exit(3)
	case "orphan":
		out, err := exec.Command("/proc/self/exe", "parent").Output()
		if err != nil {
			return []byte(fmt.Sprintf(`{"error": %q}`, err.Error()))
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
		return []byte(fmt.Sprintf(`{"orphan": %d}`, pid))
	}
	return event
}

// helper: "parent" starts a "child" and exits without waiting; the child sleeps briefly.
func helper(role string) {
	if role == "parent" {
		child := exec.Command("/proc/self/exe", "child")
		if err := child.Start(); err != nil {
			os.Exit(1)
		}
		fmt.Println(child.Process.Pid)
		return
	}
	time.Sleep(300 * time.Millisecond)
}
