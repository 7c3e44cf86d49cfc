"""The HTML, CSS and JavaScript of the page at ``/`` (served by ``page.py``), as plain strings:
no build step, no framework, nothing loaded from another host.

What the page calls: ``GET``/``POST /ui/products`` (relayed to the product service),
``POST /orders`` (a basket's ``items`` and the total shown, as ``total_price``: the total the
person agreed to), ``GET /orders/events`` (the status changes, Server-Sent Events read with
``fetch`` so that the token goes in the Authorization header, never in the URL: an
``EventSource`` cannot set a header), ``GET /orders/{id}`` (an order whose status changed;
polled every 2 s instead while the stream is down, and every 15 s beside it),
``POST /orders/{id}/cancel`` and ``POST /orders/{id}/confirm`` (a held order, ``reserved``,
shows the seconds left before it expires, counted down, and a Confirm button). The basket
and the orders placed from a tab are remembered in its ``sessionStorage``, so a reload keeps
them. Data reaches the document as text only (``textContent``, ``new Option``), never as
markup.
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
  <p>Create products with some stock, put a few in the basket and place the order; watch it
  go from <strong>pending</strong> to <strong>confirmed</strong> (the product service took
  the units of every line) or <strong>failed</strong> (a line short of stock, or a price
  changed since it went in the basket: nothing is taken). Cancelling a pending or confirmed
  order gives its units back.</p>
  <form id="token-form" aria-describedby="token-note">
    <label for="token">Access token</label>
    <input id="token" name="token" type="password" autocomplete="off" spellcheck="false">
    <button type="submit">Use</button>
    <button id="token-forget" type="button">Forget</button>
    <span id="token-note" class="note">Needed when the services check tokens: paste one from
    <code>orderstack token NAME --role customer</code>. Kept in this tab only.</span>
  </form>
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
      <section aria-labelledby="basket-heading">
        <h2 id="basket-heading" tabindex="-1">Basket</h2>
        <form id="basket-form" aria-describedby="basket-error">
          <div class="field">
            <label for="basket-product">Product</label>
            <select id="basket-product" name="product_id" required></select>
          </div>
          <div class="field">
            <label for="basket-quantity">Quantity</label>
            <input id="basket-quantity" name="quantity" type="number" min="1" max="1000"
              step="1" value="1" required>
          </div>
          <button type="submit">Add to basket</button>
          <p id="basket-error" class="error" role="alert"></p>
        </form>
        <table id="basket" hidden>
          <caption class="visually-hidden">The basket's lines, at the prices shown when
          they were added</caption>
          <thead><tr>
            <th scope="col">Product</th><th scope="col" class="num">Unit price</th>
            <th scope="col" class="num">Quantity</th><th scope="col" class="num">Line total</th>
            <th scope="col"><span class="visually-hidden">Action</span></th>
          </tr></thead>
          <tbody></tbody>
          <tfoot><tr>
            <th scope="row" colspan="3">Total</th>
            <td class="num"><output id="basket-total">–</output></td><td></td>
          </tr></tfoot>
        </table>
        <p id="basket-note" class="note">The basket is empty: add a product.</p>
        <button id="place-order" type="button">Place order</button>
        <p id="order-error" class="error" role="alert"></p>
      </section>
    </div>
  </div>
  <section aria-labelledby="orders-heading">
    <h2 id="orders-heading" tabindex="-1">Orders placed from this page</h2>
    <p class="note">Newest first. A pending order is asked for its status every 0.4 s until it
    settles; the products above are refreshed every 2 s.</p>
    <p id="announcer" class="announcer" role="status" aria-live="polite" aria-atomic="true"></p>
    <table id="orders">
      <thead><tr>
        <th scope="col">Order</th><th scope="col">Lines</th>
        <th scope="col" class="num">Total price</th><th scope="col">Status</th>
        <th scope="col"><span class="visually-hidden">Action</span></th>
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
.badge.reserved { color: #1d3f8f; background: #e3ebfd; }
.badge.expired { color: #333; background: #ececec; }
.countdown { display: block; margin-top: .15rem; font-variant-numeric: tabular-nums; }
.skip { position: absolute; left: -999px; }
.skip:focus { left: 1rem; top: 1rem; background: #fff; padding: .5rem; }
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden;
  clip: rect(0 0 0 0); white-space: nowrap; }
[hidden] { display: none !important; }
#basket { margin-top: .5rem; }
#basket input { width: 5.5rem; text-align: right; }
#basket input[aria-invalid="true"] { border: 2px solid #9b1c1c; }
tfoot th, tfoot td { font-weight: 700; border-top: 2px solid var(--ink); border-bottom: 0; }
#place-order { margin-top: .25rem; }
.price-note { display: block; font-size: .875rem; color: #6b3d00; }
.lines { margin: 0; padding-left: 1.1rem; }
.reason { display: block; margin-top: .15rem; color: #8f1a12; }
"""

PAGE_JS = r"""
"use strict";
(() => {
  const TERMINAL = new Set(["confirmed", "failed", "cancelled", "expired"]);
  const CANCELLABLE = new Set(["pending", "confirmed", "reserved"]);
  const POLL_MS = 2000; // while the stream of status changes is down
  const SAFETY_POLL_MS = 15000; // beside it
  const RECONNECT_MS = 1000;
  const REFUSED_RETRY_MS = 10000; // no token (authentication on): again later, or on a new one
  const PRODUCTS_MS = 2000;
  const PAGE = 100; // products shown: the newest 100
  const KEPT = 100; // orders remembered by this tab
  const MAX_LINES = 100; // lines of one order (POST /orders takes 1 to 100)
  const MAX_UNITS = 1000; // units of one line
  const STORE = "orderstack.page.orders";
  const BASKET_STORE = "orderstack.page.basket";
  const $ = (id) => document.getElementById(id);
  const products = new Map(); // id -> product, as last listed
  const names = new Map(); // product id -> the last name seen (for orders of unlisted products)
  const orders = new Map(); // id -> order, in the order they were placed
  // product id -> {product_id, name, price, quantity}, in the order added. A line keeps the
  // price shown when it was added: the order is placed at the total the person saw, and
  // fails (price_changed) if the catalog's differs by then. A line is replaced, never
  // changed in place; quantity is null while its field holds no valid quantity.
  const basket = new Map();

  function errorText(status, data) {
    let text = "";
    if (data && typeof data === "object") {
      const message = data.message !== undefined ? data.message : data.error;
      text = Array.isArray(message) ? message.join("; ") : String(message || "");
    }
    return (text || "request failed") + " (HTTP " + status + ")";
  }

  // The bearer token the person pasted, kept in this tab's sessionStorage (never a cookie:
  // no other site's form can send it).
  const TOKEN_KEY = "orderstack.token";
  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

  function useToken(event) {
    event.preventDefault();
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    $("token").value = "";
    $("token-note").textContent = value ? "Token in use for this tab." : "No token in use.";
  }

  function forgetToken() {
    sessionStorage.removeItem(TOKEN_KEY);
    $("token-note").textContent = "No token in use.";
  }

  async function call(method, url, body) {
    const init = { method, headers: { Accept: "application/json" } };
    if (token()) init.headers.Authorization = "Bearer " + token();
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
  const known = (value) => value !== null && value !== undefined;
  const isQuantity = (value) => Number.isInteger(value) && value >= 1 && value <= MAX_UNITS;
  const nameOf = (id) => names.get(id) || "product #" + id;

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

  // Text changes only where it differs: rows stay the same elements between refreshes.
  function setText(element, text) {
    if (element.textContent !== text) element.textContent = text;
  }

  // --- products ---------------------------------------------------------------------
  async function refreshProducts() {
    let page = await call("GET", "/ui/products?limit=" + PAGE + "&offset=0");
    if (page.total > PAGE) {
      page = await call("GET", "/ui/products?limit=" + PAGE + "&offset=" + (page.total - PAGE));
    }
    products.clear();
    for (const product of page.items) {
      products.set(product.id, product);
      names.set(product.id, product.name);
    }
    renderProducts(page.total);
  }

  function renderProducts(total) {
    // Rows are updated in place, not rebuilt: what a person (or a test) holds stays there.
    const body = $("products").tBodies[0];
    const rows = new Map([...body.rows].map((row) => [row.id, row]));
    let previous = null;
    for (const product of products.values()) {
      const id = "product-" + product.id;
      let row = rows.get(id);
      rows.delete(id);
      if (!row) {
        row = document.createElement("tr");
        row.id = id;
        row.append(cell("td", String(product.id)), cell("td", ""), cell("td", "", "num price"),
          cell("td", "", "num stock"));
      }
      setText(row.cells[1], product.name);
      setText(row.cells[2], money(product.price));
      setText(row.cells[3], String(product.qty));
      const place = previous ? previous.nextSibling : body.firstChild;
      if (place !== row) body.insertBefore(row, place);
      previous = row;
    }
    for (const row of rows.values()) row.remove();
    $("products-note").textContent = total === 0 ? "No products yet: create one."
      : total > products.size ? "The newest " + products.size + " of " + total + " products."
      : "";
    renderProductChoices();
    renderBasket();
    for (const order of orders.values()) renderOrder(order);
  }

  function renderProductChoices() {
    // Update the options in place: the list must not jump under a person choosing from it.
    const select = $("basket-product");
    const chosen = select.value;
    const existing = new Map([...select.options].map((option) => [option.value, option]));
    for (const product of products.values()) {
      const value = String(product.id);
      const text = "#" + product.id + " " + product.name + ", " + money(product.price)
        + " (" + product.qty + " in stock)";
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
        $("basket-product").value = String(product.id);
        announce(["Product " + product.id + ", " + product.name + ", created with "
          + product.qty + " in stock."]);
      } catch (e) {
        $("product-error").textContent = "Product not created: " + e.message;
      }
    });
  }

  // --- the basket -------------------------------------------------------------------
  function saveBasket() {
    try {
      sessionStorage.setItem(BASKET_STORE, JSON.stringify([...basket.values()]));
    } catch (e) { /* private mode */ }
  }

  function loadBasket() {
    let lines = [];
    try {
      lines = JSON.parse(sessionStorage.getItem(BASKET_STORE) || "[]");
    } catch (e) {
      lines = [];
    }
    if (!Array.isArray(lines)) return;
    for (const line of lines.slice(0, MAX_LINES)) {
      if (!line || !Number.isInteger(line.product_id) || !(Number(line.price) >= 0)) continue;
      const name = String(line.name);
      names.set(line.product_id, name);
      basket.set(line.product_id, {
        product_id: line.product_id,
        name,
        price: Number(line.price),
        quantity: isQuantity(line.quantity) ? line.quantity : null,
      });
    }
  }

  // The basket's total in cents, at the prices it shows; null while a line has no quantity.
  function basketCents() {
    let total = 0;
    for (const line of basket.values()) {
      if (line.quantity === null) return null;
      total += cents(line.price) * line.quantity;
    }
    return total;
  }

  function basketRow(line) {
    const row = document.createElement("tr");
    row.id = "basket-line-" + line.product_id;
    const name = cell("th", "");
    name.scope = "row";
    const price = cell("td", "", "num");
    price.append(cell("span", "", "price"), cell("span", "", "price-note"));
    const quantity = cell("td", "", "num");
    const field = document.createElement("input");
    field.id = "basket-quantity-" + line.product_id;
    field.type = "number";
    field.min = "1";
    field.max = String(MAX_UNITS);
    field.step = "1";
    field.required = true;
    field.value = line.quantity === null ? "" : String(line.quantity);
    field.dataset.quantity = field.value; // the last quantity it showed or was given
    field.addEventListener("input", () => changeQuantity(line.product_id, field));
    const label = cell("label", "", "visually-hidden");
    label.htmlFor = field.id;
    quantity.append(label, field);
    const remove = cell("button", "Remove", "secondary");
    remove.type = "button";
    remove.append(cell("span", "", "visually-hidden"));
    remove.addEventListener("click", () => removeLine(line.product_id));
    const action = cell("td", "");
    action.append(remove);
    row.append(name, price, quantity, cell("td", "", "num line-total"), action);
    return row;
  }

  function renderBasket() {
    const body = $("basket").tBodies[0];
    const rows = new Map([...body.rows].map((row) => [row.id, row]));
    let repriced = false;
    for (const line of basket.values()) {
      const id = "basket-line-" + line.product_id;
      let row = rows.get(id);
      rows.delete(id);
      if (!row) {
        row = basketRow(line);
        body.append(row);
      }
      const listed = products.get(line.product_id);
      const name = listed !== undefined ? listed.name : line.name;
      setText(row.cells[0], name);
      setText(row.querySelector(".price"), money(line.price));
      const moved = listed !== undefined && cents(listed.price) !== cents(line.price);
      repriced = repriced || moved;
      setText(row.querySelector(".price-note"), moved ? "list now " + money(listed.price) : "");
      setText(row.querySelector("label"), "Quantity of " + name);
      // The field is written only when the line's quantity changed elsewhere (added again),
      // never under a person typing in it.
      const field = row.querySelector("input");
      if (line.quantity !== null && field.dataset.quantity !== String(line.quantity)) {
        field.value = String(line.quantity);
        field.dataset.quantity = field.value;
      }
      field.setAttribute("aria-invalid", line.quantity === null ? "true" : "false");
      setText(row.querySelector(".line-total"),
        line.quantity === null ? "–" : money((cents(line.price) * line.quantity) / 100));
      setText(row.querySelector("button .visually-hidden"), " " + name);
    }
    for (const row of rows.values()) row.remove();
    const total = basketCents();
    setText($("basket-total"), total === null ? "–" : money(total / 100));
    $("basket").hidden = basket.size === 0;
    setText($("basket-note"), basket.size === 0 ? "The basket is empty: add a product."
      : total === null ? "Give each line a quantity from 1 to " + MAX_UNITS + "."
      : repriced ? "A price in the list changed since its line went in the basket: placed as "
        + "it is, the order fails (price changed). Remove the line and add it again to take "
        + "the list's price."
      : "");
  }

  function addToBasket(event) {
    event.preventDefault();
    const error = $("basket-error");
    error.textContent = "";
    const product = products.get(Number($("basket-product").value));
    const quantity = Number($("basket-quantity").value);
    if (!product) {
      error.textContent = "Choose a product first (create one if the list is empty).";
      return;
    }
    if (!isQuantity(quantity)) {
      error.textContent = "Give a quantity from 1 to " + MAX_UNITS + ".";
      return;
    }
    const line = basket.get(product.id);
    const units = (line && line.quantity !== null ? line.quantity : 0) + quantity;
    if (!line && basket.size >= MAX_LINES) {
      error.textContent = "An order has at most " + MAX_LINES + " lines.";
      return;
    }
    if (units > MAX_UNITS) {
      error.textContent = "At most " + MAX_UNITS + " units of a product in one order ("
        + (units - quantity) + " already in the basket).";
      return;
    }
    // Added again, a product's line takes the price the list shows now.
    basket.set(product.id, {
      product_id: product.id, name: product.name, price: product.price, quantity: units,
    });
    names.set(product.id, product.name);
    saveBasket();
    renderBasket();
    $("basket-quantity").value = "1";
    announce([units + " × " + product.name + " in the basket; total "
      + $("basket-total").textContent + "."]);
  }

  function changeQuantity(productId, field) {
    const line = basket.get(productId);
    if (!line) return;
    const value = field.value.trim() === "" ? NaN : Number(field.value);
    const quantity = isQuantity(value) ? value : null;
    field.dataset.quantity = quantity === null ? "" : String(quantity);
    basket.set(productId, { ...line, quantity });
    saveBasket();
    renderBasket();
  }

  function removeLine(productId) {
    const body = $("basket").tBodies[0];
    const index = [...body.rows].findIndex((row) => row.id === "basket-line-" + productId);
    const line = basket.get(productId);
    basket.delete(productId);
    saveBasket();
    renderBasket();
    // Focus goes to the line that took its place, else back to choosing a product.
    const rows = [...body.rows];
    const next = rows[Math.min(index, rows.length - 1)];
    (next ? next.querySelector("button") : $("basket-product")).focus();
    if (line) announce([line.name + " removed from the basket."]);
  }

  async function placeOrder() {
    const error = $("order-error");
    error.textContent = "";
    if (basket.size === 0) {
      error.textContent = "The basket is empty: add a product first.";
      return;
    }
    const total = basketCents();
    if (total === null) {
      error.textContent = "Give each line of the basket a quantity from 1 to " + MAX_UNITS + ".";
      return;
    }
    await busy($("place-order"), async () => {
      const lines = [...basket.values()];
      try {
        const order = await call("POST", "/orders", {
          items: lines.map((line) => ({ product_id: line.product_id, quantity: line.quantity })),
          total_price: total / 100,
        });
        // The lines ordered leave the basket (one changed meanwhile stays).
        for (const line of lines) {
          if (basket.get(line.product_id) === line) basket.delete(line.product_id);
        }
        saveBasket();
        renderBasket();
        update(order);
        remember();
        announce(["Order " + order.id + " placed: " + order.status + ", total "
          + money(total / 100) + "."]);
      } catch (e) {
        error.textContent = "Order not placed: " + e.message;
      }
    });
  }

  // --- orders -----------------------------------------------------------------------
  function remember() {
    const ids = [...orders.keys()].slice(-KEPT);
    try { sessionStorage.setItem(STORE, JSON.stringify(ids)); } catch (e) { /* private mode */ }
  }

  function linesOf(order) {
    if (Array.isArray(order.items) && order.items.length) return order.items;
    return [{ product_id: order.product_id, quantity: order.quantity }];
  }

  function lineText(item) {
    let text = item.quantity + " × " + nameOf(item.product_id);
    if (known(item.unit_price)) {
      const lineTotal = known(item.line_total) ? item.line_total
        : (cents(item.unit_price) * item.quantity) / 100;
      text += " at " + money(item.unit_price) + " = " + money(lineTotal);
    }
    return text;
  }

  // Why a failed order failed, in words: a changed price with the catalog's total, or
  // which lines were short and what was left.
  function failureText(order) {
    const failure = order.failure;
    if (order.status !== "failed" || !failure) return "";
    if (failure.reason === "price_changed") {
      return known(failure.catalog_total)
        ? "price changed: now " + money(failure.catalog_total) : "price changed";
    }
    const short = Array.isArray(failure.lines) ? failure.lines : [];
    if (short.length) {
      return "not enough stock: " + short.map((line) => nameOf(line.product_id) + " ("
        + line.requested + " asked, " + line.available + " left)").join("; ");
    }
    if (failure.reason === "product_not_found_or_unavailable") return "a product is unavailable";
    if (failure.reason === "cancelled") return "cancelled before its stock was taken";
    if (failure.reason === "total_out_of_range") return "the total is too large";
    return failure.reason ? String(failure.reason).replace(/_/g, " ") : "no reason given";
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
      row.append(header, cell("td", "", "lines-cell"), cell("td", "", "num total"),
        cell("td", "", "status"), cell("td", ""));
      body.prepend(row);
      $("orders-note").hidden = true;
    }
    const texts = linesOf(order).map(lineText);
    const lines = row.cells[1];
    if (lines.dataset.shown !== JSON.stringify(texts)) {
      lines.dataset.shown = JSON.stringify(texts);
      const list = document.createElement("ul");
      list.className = "lines";
      list.append(...texts.map((text) => cell("li", text)));
      lines.replaceChildren(list);
    }
    setText(row.cells[2], known(order.total_price) ? money(order.total_price) : "–");
    row.dataset.status = order.status;
    const reason = failureText(order);
    const status = row.cells[3];
    const ends = order.status === "reserved" && order.expires_at ? order.expires_at : "";
    if (status.dataset.shown !== order.status + "\n" + reason + "\n" + ends) {
      status.dataset.shown = order.status + "\n" + reason + "\n" + ends;
      status.replaceChildren(cell("span", order.status, "badge " + order.status));
      if (reason) status.append(cell("span", reason, "reason"));
      if (ends) {
        // A held order: the time left to confirm it, counted down every second (by this
        // browser's clock; the server's decides).
        const left = cell("span", "", "countdown");
        left.dataset.expires = ends;
        status.append(left);
        countdown(left);
      }
    }
    const action = row.cells[4];
    if (action.dataset.status !== order.status) {
      action.dataset.status = order.status;
      const hadFocus = action.contains(document.activeElement);
      action.replaceChildren();
      if (order.status === "reserved") {
        const confirm = cell("button", "Confirm");
        confirm.type = "button";
        confirm.append(cell("span", " order " + order.id, "visually-hidden"));
        confirm.addEventListener("click", () => confirmOrder(order.id, confirm));
        action.append(confirm, " ");
      }
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

  function countdown(element) {
    const left = Math.ceil((Date.parse(element.dataset.expires) - Date.now()) / 1000);
    setText(element, left > 0 ? "expires in " + left + " s" : "expiring");
  }

  function update(order) {
    const before = orders.get(order.id);
    orders.set(order.id, order);
    renderOrder(order);
    if (!before || before.status === order.status) return null;
    const reason = failureText(order);
    return "Order " + order.id + " " + order.status + (reason ? ": " + reason : "") + ".";
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

  async function confirmOrder(id, button) {
    await busy(button, async () => {
      $("order-error").textContent = "";
      try {
        const order = await call("POST", "/orders/" + id + "/confirm");
        announce([update(order) || "Order " + id + " " + order.status + "."]);
      } catch (e) {
        $("order-error").textContent = "Order " + id + " not confirmed: " + e.message;
        const fresh = await call("GET", "/orders/" + id).catch(() => null);
        if (fresh) announce([update(fresh)].filter(Boolean));
      }
    });
  }

  async function refreshOrders(ids) {
    const changes = await Promise.all(ids.slice(0, 20).map((id) =>
      call("GET", "/orders/" + id).then(update, () => null)));
    const messages = changes.filter(Boolean);
    announce(messages);
    if (messages.length) refreshProducts().catch(() => {});
  }

  async function poll() {
    const pending = [...orders.values()].filter((order) => !TERMINAL.has(order.status));
    await refreshOrders(pending.map((order) => order.id));
    setTimeout(poll, document.body.dataset.stream === "open" ? SAFETY_POLL_MS : POLL_MS);
  }

  // The status changes of this caller's orders, as Server-Sent Events, read with fetch():
  // the token goes in the Authorization header (an EventSource cannot send one, and a token
  // in the URL would land in logs). Each change of an order of this tab refreshes it; the
  // stream resumes after the last event id seen (Last-Event-ID) when it breaks.
  let lastEventId = null;
  let stream = null; // the AbortController of the open stream
  let streamToken = null;
  let retry = null; // the timer of the next attempt while the stream is down

  function onEvent(fields) {
    if (fields.id !== undefined) lastEventId = fields.id;
    if (fields.event !== "status" || fields.data === undefined) return;
    let change = null;
    try { change = JSON.parse(fields.data); } catch (e) { return; }
    const order = orders.get(Number(change.id));
    if (order && order.status !== change.status) refreshOrders([order.id]);
  }

  async function listen() {
    retry = null;
    const controller = new AbortController();
    stream = controller;
    streamToken = token();
    const headers = { Accept: "text/event-stream" };
    if (streamToken) headers.Authorization = "Bearer " + streamToken;
    if (lastEventId !== null) headers["Last-Event-ID"] = lastEventId;
    let wait = RECONNECT_MS;
    try {
      const response = await fetch("/orders/events", { headers, signal: controller.signal });
      if (response.status === 401 || response.status === 403) wait = REFUSED_RETRY_MS;
      if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
      document.body.dataset.stream = "open";
      // Changes while the stream was down: read once now.
      refreshOrders([...orders.values()]
        .filter((order) => !TERMINAL.has(order.status)).map((order) => order.id));
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let fields = {};
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, end).replace(/\r$/, "");
          buffer = buffer.slice(end + 1);
          if (line === "") { onEvent(fields); fields = {}; continue; }
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const name = colon < 0 ? line : line.slice(0, colon);
          fields[name] = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        }
      }
    } catch (e) {
      /* refused (no token with authentication on), or the server went away: poll */
    }
    if (stream === controller) {
      document.body.dataset.stream = "down";
      stream = null;
      retry = setTimeout(listen, wait);
    }
  }

  function restartStream() {
    // Another token: another caller's orders, from the next change.
    if (streamToken === token()) return;
    if (retry !== null) clearTimeout(retry);
    const old = stream;
    stream = null;
    if (old) old.abort();
    lastEventId = null;
    listen();
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
    if (!Array.isArray(ids)) ids = [];
    for (const id of ids) {
      const order = await call("GET", "/orders/" + Number(id)).catch(() => null);
      if (order) update(order);
    }
  }

  document.addEventListener("DOMContentLoaded", async () => {
    $("token-form").addEventListener("submit", (event) => { useToken(event); restartStream(); });
    $("token-forget").addEventListener("click", () => { forgetToken(); restartStream(); });
    $("product-form").addEventListener("submit", createProduct);
    $("basket-form").addEventListener("submit", addToBasket);
    $("place-order").addEventListener("click", placeOrder);
    loadBasket();
    renderBasket();
    listen();
    await productsLoop();
    await restore();
    document.body.dataset.ready = "true";
    poll();
    setInterval(() => document.querySelectorAll(".countdown").forEach(countdown), 1000);
  });
})();
"""
