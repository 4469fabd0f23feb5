import net from "node:net";
const s = net.connect(7140, "127.0.0.1", () => {
  setTimeout(() => { console.log(typeof (s as any).resetAndDestroy); (s as any).resetAndDestroy(); }, 300);
});
