// useNilecast: one nilecast client per component tree, connected while mounted.
//
//   const { client, connected } = useNilecast({ url, token });
//   useNilecastEvent(client, "inventory:update", (change) => ...);
import { useEffect, useRef, useState } from "react";
import { NilecastClient } from "../../../clients/js/nilecast.js";

export function useNilecast({ url, token, tenant, autoReconnect = true, maxReconnectAttempts = Infinity }) {
  const [client, setClient] = useState(null);
  const [connected, setConnected] = useState(false);
  const [error, setError] = useState(null);

  useEffect(() => {
    const c = new NilecastClient({ url, token, tenant, autoReconnect, maxReconnectAttempts });
    c.on("connected", () => setConnected(true));
    c.on("disconnected", () => setConnected(false));
    c.on("error", (e) => setError(e));
    c.connect().catch((e) => setError(e));
    setClient(c);
    return () => c.disconnect();
  }, [url, token, tenant, autoReconnect, maxReconnectAttempts]);

  return { client, connected, error };
}

/** Calls the latest `handler` for every `event` from `client`, while mounted. */
export function useNilecastEvent(client, event, handler) {
  const latest = useRef(handler);
  latest.current = handler;
  useEffect(() => {
    if (!client) return undefined;
    const listener = (data, ns) => latest.current(data, ns);
    client.on(event, listener);
    return () => client.off(event, listener);
  }, [client, event]);
}
