// The chat's header: the open conversation's title (the tab's title too), its total cost, the
// connection indicator, and the conversation menu (Share…, New title; the export links are
// transfer.js's). The model picker and the settings toggle sit here too, with modules of their own.

import { usd } from "./format.js";
import { Popover } from "./popover.js";
import { ShareDialog } from "./sharing.js";

const CONNECTION_LABELS = {
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};

const $ = (id) => document.getElementById(id);

export class ChatHeader {
  // onRetitle(): a new title was asked for the conversation shown.
  constructor({ onRetitle }) {
    this.siteName = document.title;
    // The conversation the menu acts on; null for a new chat, which has no menu yet.
    this.conversationId = null;
    this.shareDialog = new ShareDialog();
    this.menuButton = $("conv-menu-button");
    this.menu = new Popover(this.menuButton, $("conv-menu"));
    // Titles are written once per conversation; a new one (billed like any) only when asked.
    $("retitle").addEventListener("click", () => {
      if (this.conversationId === null) return;
      this.menu.close(false);
      onRetitle();
    });
    $("share-open").addEventListener("click", () => {
      if (this.conversationId !== null) this.shareDialog.open(this.conversationId, this.menuButton);
    });
    // Renamed from the sidebar.
    document.addEventListener("conversation-renamed", (event) => {
      if (event.detail.id === this.conversationId) this.showTitle(event.detail.title);
    });
  }

  // Share and the rest of the menu need a conversation; a new chat has none yet.
  showConversation(id) {
    this.conversationId = id;
    $("conv-menu-root").hidden = id === null;
    if (id === null) this.menu.close(false);
  }

  showTitle(title) {
    $("chat-title").textContent = title || "New chat";
    document.title = title ? `${title} · ${this.siteName}` : this.siteName;
  }

  showTotal(total) {
    const element = $("total-cost");
    element.dataset.total = total ?? "0";
    element.textContent = `Total ${usd(total ?? "0")}`;
  }

  showConnection(state) {
    $("connection").dataset.connection = state;
    $("connection-label").textContent = CONNECTION_LABELS[state] ?? state;
  }
}
