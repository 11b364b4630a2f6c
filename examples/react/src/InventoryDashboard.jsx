// The seed's InventoryDashboard, on nilecast: the current stock, updated in place by
// `inventory:update`, and the low-stock alerts.
import React, { useEffect, useState } from "react";
import { useNilecast, useNilecastEvent } from "./useNilecast.js";

const key = (item) => `${item.productId}/${item.warehouseId}`;

function updateInventoryItem(inventory, update) {
  const item = update.data;
  const found = inventory.some((i) => key(i) === key(item));
  return found
    ? inventory.map((i) => (key(i) === key(item) ? { ...i, ...item, seq: update.seq } : i))
    : [{ ...item, seq: update.seq }, ...inventory];
}

export default function InventoryDashboard({ url, token }) {
  const { client, connected } = useNilecast({ url, token });
  const [inventory, setInventory] = useState([]);
  const [lowStockAlerts, setLowStockAlerts] = useState([]);

  useEffect(() => {
    if (!client) return;
    client.getCurrentInventory({ limit: 100 }).then((current) => setInventory(current.items));
    client.subscribeToInventory({ lowStockOnly: false });
  }, [client]);

  useNilecastEvent(client, "inventory:update", (data) => {
    setInventory((prev) => updateInventoryItem(prev, data));
  });
  useNilecastEvent(client, "inventory:low-stock", (alert) => {
    setLowStockAlerts((prev) => [alert, ...prev].slice(0, 20));
  });

  return (
    <div>
      <h2>Real-Time Inventory {connected ? "(live)" : "(connecting)"}</h2>
      {lowStockAlerts.length > 0 && (
        <div className="alerts">
          {lowStockAlerts.map((alert) => (
            <div key={alert.id} className="alert alert-warning">
              {alert.message}
            </div>
          ))}
        </div>
      )}
      <table>
        <thead>
          <tr><th>product</th><th>warehouse</th><th>quantity</th></tr>
        </thead>
        <tbody>
          {inventory.map((item) => (
            <tr key={key(item)}>
              <td>{item.productId}</td>
              <td>{item.warehouseId}</td>
              <td>{item.quantity}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
