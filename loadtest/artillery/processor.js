"use strict";
// Counters for frames the virtual users receive; artillery's ws engine counts none unless a step
// waits for a reply, and its socketio engine counts none at all. Shown in the report as
// nilecast.frames_received, nilecast.received.<event>.

// ws engine: a `function` step after the connection is open.
function countNativeFrames(context, events, done) {
  context.ws.on("message", (data, isBinary) => {
    events.emit("counter", "nilecast.frames_received", 1);
    if (isBinary) return events.emit("counter", "nilecast.received.binary", 1);
    try {
      const msg = JSON.parse(data.toString());
      const name = msg.event !== undefined ? msg.event : msg.ack !== undefined ? "ack" : "other";
      events.emit("counter", `nilecast.received.${name}`, 1);
    } catch {
      events.emit("counter", "nilecast.received.invalid_json", 1);
    }
  });
  return done();
}

// socketio engine: a `function` step after the namespace socket exists (after its first emit).
// The engine patches each socket with socketio-wildcard, which replaces onevent so that every
// incoming event is emitted as "*" with the raw packet (socket.onAny no longer fires).
function countSocketIoEvents(context, events, done) {
  for (const [ns, socket] of Object.entries(context.sockets || {})) {
    if (ns === "") continue;
    socket.on("*", (packet) => {
      const event = Array.isArray(packet && packet.data) ? packet.data[0] : "other";
      events.emit("counter", "nilecast.frames_received", 1);
      events.emit("counter", `nilecast.received.${event}`, 1);
    });
  }
  return done();
}

module.exports = { countNativeFrames, countSocketIoEvents };
