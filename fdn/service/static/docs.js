// Renders /openapi.json as a plain list of operations: no CDN, no framework.
"use strict";

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

async function main() {
  const spec = await (await fetch("/openapi.json")).json();
  const root = document.getElementById("docs");
  root.appendChild(el("p", `${spec.info.title} ${spec.info.version}: ${spec.info.description}`));
  for (const [path, operations] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(operations)) {
      const box = el("section", undefined, "box");
      box.appendChild(el("h2", `${method.toUpperCase()} ${path}`));
      box.appendChild(el("p", op.summary || ""));
      if (op.description) box.appendChild(el("p", op.description, "hint"));
      if (op.parameters && op.parameters.length) {
        const list = el("ul");
        for (const p of op.parameters) {
          const schema = p.schema || {};
          const extra = schema.enum ? ` one of ${schema.enum.join(", ")}` : "";
          const dflt = schema.default !== undefined ? ` [default ${schema.default}]` : "";
          list.appendChild(el("li", `${p.name} (${p.in}, ${schema.type}${p.required ? ", required" : ""})` +
            `${extra}${dflt}${p.description ? ": " + p.description : ""}`));
        }
        box.appendChild(list);
      }
      const codes = Object.entries(op.responses || {}).map(([c, r]) => `${c} ${r.description}`);
      box.appendChild(el("p", `Responses: ${codes.join("; ")}`, "hint"));
      root.appendChild(box);
    }
  }
}

main().catch((error) => { document.getElementById("docs").textContent = String(error); });
