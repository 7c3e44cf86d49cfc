"""The HTML, CSS and JavaScript of the page at ``/`` (served by ``page.py``), as plain strings:
no build step, no framework, nothing loaded from another host.

What the page calls: ``GET``/``POST /ui/products`` (relayed to the product service),
``POST /orders``, ``GET /orders/{id}`` (polled while an order is pending) and
``POST /orders/{id}/cancel``. The orders placed from a tab are remembered in its
``sessionStorage``, so a reload keeps following them.
"""

from __future__ import annotations

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>orderstack: orders settling live</title>
<link rel="stylesheet" href="/ui/page.css">
<script src="/ui/page.js" defer></script>
</head>
<body>
<a class="skip" href="#orders-heading">Skip to the orders</a>
<header>
  <h1>orderstack</h1>
  <p>Create a product with some stock, place orders for it, and watch each order go from
  <strong>pending</strong> to <strong>confirmed</strong> (the product service took its units)
  or <strong>failed</strong> (not enough stock left). Cancelling a pending or confirmed order
  gives its units back.</p>
</header>
<main>
  <div class="columns">
    <section aria-labelledby="products-heading">
      <h2 id="products-heading">Products</h2>
      <table id="products">
        <thead><tr>
          <th scope="col">ID</th><th scope="col">Name</th>
          <th scope="col" class="num">Price</th><th scope="col" class="num">Stock</th>
        </tr></thead>
        <tbody></tbody>
      </table>
      <p id="products-note" class="note">Loading the products…</p>
    </section>
    <div>
      <section aria-labelledby="new-product-heading">
        <h2 id="new-product-heading">New product</h2>
        <form id="product-form" aria-describedby="product-error">
          <div class="field">
            <label for="product-name">Name</label>
            <input id="product-name" name="name" required maxlength="255" autocomplete="off">
          </div>
          <div class="field">
            <label for="product-price">Price</label>
            <input id="product-price" name="price" type="number" inputmode="decimal"
              min="0.01" step="0.01" required>
          </div>
          <div class="field">
            <label for="product-qty">Stock (units)</label>
            <input id="product-qty" name="qty" type="number" min="0" step="1" required>
          </div>
          <button type="submit">Create product</button>
          <p id="product-error" class="error" role="alert"></p>
        </form>
      </section>
      <section aria-labelledby="order-heading">
        <h2 id="order-heading">Place an order</h2>
        <form id="order-form" aria-describedby="order-error">
          <div class="field">
            <label for="order-product">Product</label>
            <select id="order-product" name="product_id" required></select>
          </div>
          <div class="field">
            <label for="order-quantity">Quantity</label>
            <input id="order-quantity" name="quantity" type="number" min="1" max="1000"
              step="1" value="1" required>
          </div>
          <p>Total price: <output id="order-total" for="order-product order-quantity">–</output></p>
          <button type="submit">Place order</button>
          <p id="order-error" class="error" role="alert"></p>
        </form>
      </section>
    </div>
  </div>
  <section aria-labelledby="orders-heading">
    <h2 id="orders-heading" tabindex="-1">Orders placed from this page</h2>
    <p class="note">Newest first. A pending order is asked for its status every 0.4 s until it
    settles; the stock above is refreshed every 2 s.</p>
    <p id="announcer" class="announcer" role="status" aria-live="polite" aria-atomic="true"></p>
    <table id="orders">
      <thead><tr>
        <th scope="col">Order</th><th scope="col">Product</th>
        <th scope="col" class="num">Quantity</th><th scope="col" class="num">Total price</th>
        <th scope="col">Status</th><th scope="col"><span class="visually-hidden">Action</span></th>
      </tr></thead>
      <tbody></tbody>
    </table>
    <p id="orders-note" class="note">No orders yet.</p>
  </section>
</main>
</body>
</html>
"""

# Colours: every text/background pair has a contrast ratio of at least 7:1 (WCAG AAA for
# body text), the focus ring at least 3:1 against the white page.
PAGE_CSS = """
:root { color-scheme: light; --ink: #1b1b1b; --muted: #4a4a4a; --line: #b8b8b8;
  --accent: #0b4f9c; --focus: #c2410c; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); background: #fff; }
header, main { max-width: 68rem; margin: 0 auto; padding: 0 1.25rem; }
main { padding-bottom: 1.5rem; }
header { padding-top: 1rem; }
h1 { margin: 0 0 .25rem; font-size: 1.75rem; }
h2 { font-size: 1.2rem; margin: 1.25rem 0 .5rem; }
.columns { display: grid; grid-template-columns: 1.3fr 1fr; gap: 2rem; }
@media (max-width: 50rem) { .columns { grid-template-columns: 1fr; } }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid var(--line); }
thead th { border-bottom: 2px solid var(--ink); }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: var(--muted); margin: .5rem 0; }
.field { display: flex; flex-direction: column; margin-bottom: .6rem; }
label { font-weight: 600; }
input, select, button { font: inherit; }
input, select { padding: .35rem .5rem; border: 1px solid #5c5c5c; border-radius: 4px;
  background: #fff; color: var(--ink); max-width: 22rem; }
button { padding: .4rem .9rem; border: 2px solid var(--accent); border-radius: 4px;
  background: var(--accent); color: #fff; cursor: pointer; }
button.secondary { background: #fff; color: var(--accent); padding: .15rem .6rem; }
button[aria-disabled="true"] { opacity: .6; cursor: progress; }
:focus-visible { outline: 3px solid var(--focus); outline-offset: 2px; }
.error { color: #9b1c1c; font-weight: 600; min-height: 1.5em; margin: .4rem 0 0; }
.announcer { min-height: 1.5em; font-weight: 600; margin: .25rem 0 .5rem; }
.badge { display: inline-block; padding: 0 .5rem; border-radius: 999px; font-weight: 600;
  border: 1px solid currentColor; }
.badge.pending { color: #6b3d00; background: #fff1d1; }
.badge.confirmed { color: #0a4d1c; background: #e2f4e6; }
.badge.failed { color: #8f1a12; background: #fde6e3; }
.badge.cancelled { color: #333; background: #ececec; }
.skip { position: absolute; left: -999px; }
.skip:focus { left: 1rem; top: 1rem; background: #fff; padding: .5rem; }
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden;
  clip: rect(0 0 0 0); white-space: nowrap; }
"""

PAGE_JS = r"""
"use strict";
(() => {
  const TERMINAL = new Set(["confirmed", "failed", "cancelled"]);
  const CANCELLABLE = new Set(["pending", "confirmed"]);
  const POLL_MS = 400;
  const PRODUCTS_MS = 2000;
  const PAGE = 100; // products shown: the newest 100
  const KEPT = 100; // orders remembered by this tab
  const STORE = "orderstack.page.orders";
  const $ = (id) => document.getElementById(id);
  const products = new Map(); // id -> product
  const orders = new Map(); // id -> order, in the order they were placed

  function errorText(status, data) {
    let text = "";
    if (data && typeof data === "object") {
      const message = data.message !== undefined ? data.message : data.error;
      text = Array.isArray(message) ? message.join("; ") : String(message || "");
    }
    return (text || "request failed") + " (HTTP " + status + ")";
  }

  async function call(method, url, body) {
    const init = { method, headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (e) {
      throw new Error("the order service did not answer");
    }
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (!response.ok) throw new Error(errorText(response.status, data));
    return data;
  }

  const money = (value) => Number(value).toFixed(2);
  const cents = (value) => Math.round(Number(value) * 100);

  function announce(messages) {
    if (messages.length) $("announcer").textContent = messages.join(" ");
  }

  // A button at work says so but keeps its focus (a disabled button would drop it).
  async function busy(button, work) {
    if (button.getAttribute("aria-disabled") === "true") return;
    button.setAttribute("aria-disabled", "true");
    try {
      await work();
    } finally {
      button.removeAttribute("aria-disabled");
    }
  }

  function cell(tag, text, className) {
    const element = document.createElement(tag);
    element.textContent = text;
    if (className) element.className = className;
    return element;
  }

  // --- products ---------------------------------------------------------------------
  async function refreshProducts() {
    let page = await call("GET", "/ui/products?limit=" + PAGE + "&offset=0");
    if (page.total > PAGE) {
      page = await call("GET", "/ui/products?limit=" + PAGE + "&offset=" + (page.total - PAGE));
    }
    products.clear();
    for (const product of page.items) products.set(product.id, product);
    renderProducts(page.total);
  }

  function renderProducts(total) {
    const rows = [...products.values()].map((product) => {
      const row = document.createElement("tr");
      row.id = "product-" + product.id;
      row.append(
        cell("td", String(product.id)),
        cell("td", product.name),
        cell("td", money(product.price), "num"),
        cell("td", String(product.qty), "num stock"),
      );
      return row;
    });
    $("products").tBodies[0].replaceChildren(...rows);
    $("products-note").textContent = total === 0 ? "No products yet: create one."
      : total > products.size ? "The newest " + products.size + " of " + total + " products."
      : "";
    renderProductChoices();
    for (const order of orders.values()) renderOrder(order);
  }

  function renderProductChoices() {
    // Update the options in place: the list must not jump under a person choosing from it.
    const select = $("order-product");
    const chosen = select.value;
    const existing = new Map([...select.options].map((option) => [option.value, option]));
    for (const product of products.values()) {
      const value = String(product.id);
      const text = "#" + product.id + " " + product.name + " (" + product.qty + " in stock)";
      let option = existing.get(value);
      if (!option) {
        option = new Option(text, value);
        select.add(option);
      } else if (option.text !== text) {
        option.text = text;
      }
      existing.delete(value);
    }
    for (const [value, option] of existing) if (value !== chosen) option.remove();
    if (chosen) select.value = chosen;
    renderTotal();
  }

  function renderTotal() {
    const product = products.get(Number($("order-product").value));
    const quantity = Number($("order-quantity").value);
    $("order-total").textContent = product && Number.isInteger(quantity) && quantity >= 1
      ? money((cents(product.price) * quantity) / 100) : "–";
  }

  async function createProduct(event) {
    event.preventDefault();
    const form = event.target;
    await busy(form.querySelector("button"), async () => {
      $("product-error").textContent = "";
      try {
        const product = await call("POST", "/ui/products", {
          name: $("product-name").value,
          price: cents($("product-price").value) / 100,
          qty: Number($("product-qty").value),
        });
        form.reset();
        await refreshProducts();
        $("order-product").value = String(product.id);
        renderTotal();
        announce(["Product " + product.id + ", " + product.name + ", created with "
          + product.qty + " in stock."]);
      } catch (e) {
        $("product-error").textContent = "Product not created: " + e.message;
      }
    });
  }

  // --- orders -----------------------------------------------------------------------
  function remember() {
    const ids = [...orders.keys()].slice(-KEPT);
    try { sessionStorage.setItem(STORE, JSON.stringify(ids)); } catch (e) { /* private mode */ }
  }

  function renderOrder(order) {
    const body = $("orders").tBodies[0];
    let row = $("order-" + order.id);
    if (!row) {
      row = document.createElement("tr");
      row.id = "order-" + order.id;
      const header = cell("th", "#" + order.id);
      header.scope = "row";
      header.tabIndex = -1; // focus lands here when the row's button goes away
      row.append(header, cell("td", ""), cell("td", String(order.quantity), "num"),
        cell("td", money(order.total_price), "num"), cell("td", ""), cell("td", ""));
      body.prepend(row);
      $("orders-note").hidden = true;
    }
    const product = products.get(order.product_id);
    row.cells[1].textContent = product ? product.name : "product #" + order.product_id;
    row.dataset.status = order.status;
    const status = row.cells[4];
    if (status.dataset.status !== order.status) {
      status.dataset.status = order.status;
      status.replaceChildren(cell("span", order.status, "badge " + order.status));
      const action = row.cells[5];
      const hadFocus = action.contains(document.activeElement);
      action.replaceChildren();
      if (CANCELLABLE.has(order.status)) {
        const button = cell("button", "Cancel", "secondary");
        button.type = "button";
        button.append(cell("span", " order " + order.id, "visually-hidden"));
        button.addEventListener("click", () => cancelOrder(order.id, button));
        action.append(button);
        if (hadFocus) button.focus();
      } else if (hadFocus) {
        row.cells[0].focus();
      }
    }
  }

  function update(order) {
    const before = orders.get(order.id);
    orders.set(order.id, order);
    renderOrder(order);
    const changed = before && before.status !== order.status;
    return changed ? "Order " + order.id + " " + order.status + "." : null;
  }

  async function placeOrder(event) {
    event.preventDefault();
    const button = event.target.querySelector("button");
    const product = products.get(Number($("order-product").value));
    const quantity = Number($("order-quantity").value);
    $("order-error").textContent = "";
    if (!product) {
      $("order-error").textContent = "Choose a product first (create one if the list is empty).";
      return;
    }
    await busy(button, async () => {
      try {
        const order = await call("POST", "/orders", {
          product_id: product.id,
          quantity,
          total_price: (cents(product.price) * quantity) / 100,
        });
        update(order);
        remember();
        announce(["Order " + order.id + " placed: " + order.status + "."]);
      } catch (e) {
        $("order-error").textContent = "Order not placed: " + e.message;
      }
    });
  }

  async function cancelOrder(id, button) {
    await busy(button, async () => {
      $("order-error").textContent = "";
      try {
        const order = await call("POST", "/orders/" + id + "/cancel");
        announce([update(order) || "Order " + id + " " + order.status + "."]);
        refreshProducts().catch(() => {});
      } catch (e) {
        $("order-error").textContent = "Order " + id + " not cancelled: " + e.message;
        const fresh = await call("GET", "/orders/" + id).catch(() => null);
        if (fresh) announce([update(fresh)].filter(Boolean));
      }
    });
  }

  async function poll() {
    const pending = [...orders.values()].filter((order) => !TERMINAL.has(order.status));
    const changes = await Promise.all(pending.slice(0, 20).map((order) =>
      call("GET", "/orders/" + order.id).then(update, () => null)));
    const messages = changes.filter(Boolean);
    announce(messages);
    if (messages.length) refreshProducts().catch(() => {});
    setTimeout(poll, POLL_MS);
  }

  async function productsLoop() {
    if (!document.hidden) {
      try {
        await refreshProducts();
      } catch (e) {
        $("products-note").textContent = "Products unavailable: " + e.message;
      }
    }
    setTimeout(productsLoop, PRODUCTS_MS);
  }

  async function restore() {
    let ids = [];
    try { ids = JSON.parse(sessionStorage.getItem(STORE) || "[]"); } catch (e) { ids = []; }
    for (const id of ids) {
      const order = await call("GET", "/orders/" + Number(id)).catch(() => null);
      if (order) update(order);
    }
  }

  document.addEventListener("DOMContentLoaded", async () => {
    $("product-form").addEventListener("submit", createProduct);
    $("order-form").addEventListener("submit", placeOrder);
    $("order-product").addEventListener("change", renderTotal);
    $("order-quantity").addEventListener("input", renderTotal);
    await productsLoop();
    await restore();
    document.body.dataset.ready = "true";
    poll();
  });
})();
"""
