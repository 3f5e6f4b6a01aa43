// A Node.js function that streams its response with awslambda.streamifyResponse.
// The event says what to send: chunks (strings), gate (a path waited for after the first
// chunk), http (a Function URL prelude, through awslambda.HttpResponseStream.from) and
// fail (a message: throw after the chunks, a mid-stream error).
import { existsSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";

async function waitFor(path) {
  while (!existsSync(path)) {
    await sleep(10);
  }
}

// Behind the gateway the event is a proxy event: the instructions are its body.
function instructions(event) {
  if (!event.requestContext) {
    return event;
  }
  const body = event.body ?? "{}";
  return JSON.parse(event.isBase64Encoded ? Buffer.from(body, "base64").toString() : body);
}

export const handler = awslambda.streamifyResponse(async (received, responseStream) => {
  const event = instructions(received);
  let stream = responseStream;
  if (event.http) {
    stream = awslambda.HttpResponseStream.from(responseStream, event.http);
  } else {
    stream.setContentType("text/plain");
  }
  const chunks = event.chunks ?? ["hello ", "world"];
  for (const [index, chunk] of chunks.entries()) {
    await new Promise((written) => stream.write(chunk, written)); // sent before what follows
    if (index === 0 && event.gate) {
      await waitFor(event.gate);
    }
  }
  if (event.fail) {
    throw new Error(event.fail);
  }
  stream.end();
});
