// An attached image, larger, in a modal dialog (a click on a thumbnail in the history opens it).

import { closeOnBackdrop, openModal } from "./dialogs.js";

export class ImageViewer {
  constructor() {
    this.dialog = document.getElementById("image-viewer");
    this.image = document.getElementById("image-viewer-img");
    this.link = document.getElementById("image-viewer-open");
    closeOnBackdrop(this.dialog);
  }

  show(src, alt, opener) {
    this.image.src = src;
    this.image.alt = alt;
    this.link.href = src;
    openModal(this.dialog, { returnTo: opener });
  }
}
