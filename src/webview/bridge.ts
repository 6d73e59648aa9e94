/**
 * The page side of the host connection: VS Code's `acquireVsCodeApi()`
 * bridge, typed with the protocol. In the headless browser tests a harness
 * provides the same global, so the pages run unchanged.
 */
import { dispatchMessage, type MessageHandlers } from './protocol';

interface VsCodeApi<ToHost, State> {
  postMessage(message: ToHost): void;
  getState(): State | undefined;
  setState(state: State): void;
}

declare function acquireVsCodeApi<ToHost, State>(): VsCodeApi<ToHost, State>;

export interface HostConnection<ToHost, State> {
  post(message: ToHost): void;
  /** State kept by VS Code while the panel is hidden (and across reloads when the panel is restored). */
  state(): State | undefined;
  saveState(state: State): void;
}

export function connectToHost<ToHost, FromHost extends { type: string }, State>(handlers: MessageHandlers<FromHost>): HostConnection<ToHost, State> {
  const api = acquireVsCodeApi<ToHost, State>();
  window.addEventListener('message', (event: MessageEvent<FromHost>) => {
    void dispatchMessage(handlers, event.data);
  });
  return {
    post: (message) => api.postMessage(message),
    state: () => api.getState(),
    saveState: (state) => api.setState(state),
  };
}

/** `document.getElementById` that fails loudly when the page and the script disagree. */
export function element<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (!found) throw new Error(`page has no #${id}`);
  return found as T;
}

/** The page's busy line (#busy): shown with a message, hidden with undefined. */
export function showBusy(message: string | undefined): void {
  const busy = element('busy');
  busy.hidden = !message;
  busy.textContent = message ?? '';
}

/** The page's error banner (#error), for what the host could not do. */
export function showError(message: string): void {
  const error = element('error');
  error.hidden = false;
  error.textContent = message;
}
