import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

export default defineConfig({
  plugins: [react()],
  // In development, /ws and /publish go to a nilecast on port 4001.
  server: { proxy: { "/ws": { target: "ws://localhost:4001", ws: true } } },
});
