// The Resize · Merge · Convert page (and XY plots): LoRA file tools run as jobs, with a
// preview of what each would write.
import { el, page, current, t } from "../ui.js";

export async function toolsPage() {
  if (!current("tools")) return;
  page().replaceChildren(el("h1", { text: t("Resize · Merge · Convert") }));
}
