// Products: DescribeProducts, paged.

import { html, useState } from "./vendor/preact-htm.js";
import { ErrorNotice, Loading, Pager, formatTime, href, useLoad } from "./ui.js";

const PAGE = 20; // DescribeProducts takes 10..250

export function ProductList({ call }) {
  const [offset, setOffset] = useState(0);
  const { data, error, loading } = useLoad(() => call("DescribeProducts", { Offset: offset, Limit: PAGE }), [offset]);
  return html`<section aria-labelledby="products-title">
    <h1 id="products-title">Products</h1>
    <${ErrorNotice} error=${error} />
    <${Loading} when=${loading && !data} />
    ${data &&
    (data.Products.length === 0
      ? html`<p>No products yet: create one with CreateProduct (SDK or tccli).</p>`
      : html`<div class="table-wrap">
          <table>
            <caption class="visually-hidden">Products of this account</caption>
            <thead>
              <tr><th scope="col">Product</th><th scope="col">ProductId</th><th scope="col">Description</th><th scope="col">Created</th></tr>
            </thead>
            <tbody>
              ${data.Products.map(
                (p) => html`<tr key=${p.ProductId}>
                  <td><a href=${href("products", p.ProductId)}>${p.ProductName}</a></td>
                  <td><code>${p.ProductId}</code></td>
                  <td>${(p.ProductProperties && p.ProductProperties.ProductDescription) || ""}</td>
                  <td>${formatTime(p.ProductMetadata && p.ProductMetadata.CreationDate)}</td>
                </tr>`,
              )}
            </tbody>
          </table>
        </div>`)}
    ${data && html`<${Pager} offset=${offset} limit=${PAGE} total=${data.TotalCount} onOffset=${setOffset} label="Products" />`}
  </section>`;
}

/** Every product of the account (for the task form's product choice): DescribeProducts page by page. */
export async function allProducts(call) {
  const products = [];
  for (let offset = 0; ; offset += 250) {
    const page = await call("DescribeProducts", { Offset: offset, Limit: 250 });
    products.push(...page.Products);
    if (page.Products.length === 0 || products.length >= page.TotalCount) return products;
  }
}
