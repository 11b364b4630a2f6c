import React from "react";
import { createRoot } from "react-dom/client";
import InventoryDashboard from "./InventoryDashboard.jsx";

// The seed read process.env.REACT_APP_WEBSOCKET_URL; with Vite it is VITE_NILECAST_URL.
const url = import.meta.env.VITE_NILECAST_URL || window.location.origin;
const token = localStorage.getItem("authToken") || undefined;

createRoot(document.getElementById("root")).render(<InventoryDashboard url={url} token={token} />);
