import { ConnectionState, TaskStream } from '../stream';
import { FakeWebSocket, installFakeWebSocket } from './fakes';

describe('TaskStream', () => {
  let stream: TaskStream;
  let resume: Map<string, number>;
  let random: jest.SpyInstance<number, []>;

  beforeEach(() => {
    jest.useFakeTimers();
    installFakeWebSocket();
    resume = new Map();
    stream = new TaskStream(
      () => `ws://host/stream?n=${FakeWebSocket.created.length}`,
      taskId => resume.get(taskId) ?? 0
    );
    random = jest.spyOn(Math, 'random').mockReturnValue(0);
  });

  afterEach(() => {
    stream.dispose();
    random.mockRestore();
    jest.useRealTimers();
  });

  /** The delays between a drop and the next attempt, for `drops` drops in a row. */
  function reconnectDelays(drops: number): number[] {
    const delays: number[] = [];
    for (let i = 0; i < drops; i++) {
      const before = FakeWebSocket.created.length;
      FakeWebSocket.last.drop();
      let waited = 0;
      while (FakeWebSocket.created.length === before) {
        jest.advanceTimersByTime(1);
        waited += 1;
        if (waited > 60000) {
          throw new Error('no reconnect within a minute');
        }
      }
      delays.push(waited);
    }
    return delays;
  }

  it('opens one socket on start, at the address the callback gives', () => {
    const states: ConnectionState[] = [];
    stream.stateChanged.connect((_, state) => states.push(state));
    stream.start();
    stream.start();
    expect(FakeWebSocket.created.map(s => s.url)).toEqual(['ws://host/stream?n=0']);
    expect(stream.state).toBe('connecting');
    FakeWebSocket.last.open();
    expect(stream.state).toBe('open');
    expect(states).toEqual(['connecting', 'open']);
    expect(stream.opens).toBe(1);
  });

  it('backs off from 0.5 s, doubling up to 30 s, with the jitter in the upper half', () => {
    stream.start();
    // Math.random() = 0: every delay is the lower bound, half the ceiling
    expect(reconnectDelays(9)).toEqual([250, 500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]);
  });

  it('draws each delay between half the ceiling and the ceiling', () => {
    random.mockReturnValue(0.5);
    stream.start();
    expect(reconnectDelays(8)).toEqual([375, 750, 1500, 3000, 6000, 12000, 22500, 22500]);
  });

  it('starts the back-off over after a successful open', () => {
    stream.start();
    expect(reconnectDelays(3)).toEqual([250, 500, 1000]);
    FakeWebSocket.last.open();
    expect(reconnectDelays(1)).toEqual([250]);
  });

  it('picks the address again on each reconnect (a new token is used)', () => {
    stream.start();
    reconnectDelays(2);
    expect(FakeWebSocket.created.map(s => s.url)).toEqual([
      'ws://host/stream?n=0',
      'ws://host/stream?n=1',
      'ws://host/stream?n=2'
    ]);
  });

  it('renews log subscriptions after a reconnect, from the last event seen', () => {
    const reconnected = jest.fn();
    stream.reconnected.connect(reconnected);
    stream.start();
    FakeWebSocket.last.open();
    stream.subscribe('t1');
    expect(FakeWebSocket.last.sent).toEqual([{ subscribe: 't1', after: 0 }]);
    expect(reconnected).not.toHaveBeenCalled();

    resume.set('t1', 17);
    reconnectDelays(1);
    FakeWebSocket.last.open();
    expect(FakeWebSocket.last.sent).toEqual([{ subscribe: 't1', after: 17 }]);
    expect(reconnected).toHaveBeenCalledTimes(1);
    expect(stream.opens).toBe(2);
  });

  it('sends nothing while closed, but remembers the subscription for the open', () => {
    stream.start();
    stream.subscribe('t1');
    expect(FakeWebSocket.last.sent).toEqual([]);
    FakeWebSocket.last.open();
    expect(FakeWebSocket.last.sent).toEqual([{ subscribe: 't1', after: 0 }]);
  });

  it('unsubscribes only what it subscribed, and a dropped subscription is not renewed', () => {
    stream.start();
    FakeWebSocket.last.open();
    stream.subscribe('t1');
    stream.unsubscribe('t2');
    stream.unsubscribe('t1');
    stream.unsubscribe('t1');
    expect(FakeWebSocket.last.sent).toEqual([{ subscribe: 't1', after: 0 }, { unsubscribe: 't1' }]);
    reconnectDelays(1);
    FakeWebSocket.last.open();
    expect(FakeWebSocket.last.sent).toEqual([]);
  });

  it('passes on JSON messages with a type and drops everything else', () => {
    const messages: unknown[] = [];
    stream.message.connect((_, message) => messages.push(message));
    stream.start();
    FakeWebSocket.last.open();
    FakeWebSocket.last.receive({ type: 'task', task: { id: 't1' } });
    FakeWebSocket.last.receive('not json');
    FakeWebSocket.last.receive({ no: 'type' });
    FakeWebSocket.last.receive({ type: 3 });
    FakeWebSocket.last.receive('null');
    expect(messages).toEqual([{ type: 'task', task: { id: 't1' } }]);
  });

  it('stops for good: closes the socket and does not reconnect', () => {
    stream.start();
    const socket = FakeWebSocket.last;
    socket.open();
    stream.stop();
    expect(socket.closedByClient).toBe(true);
    expect(stream.state).toBe('closed');
    jest.advanceTimersByTime(60000);
    expect(FakeWebSocket.created).toHaveLength(1);
  });

  it('cancels a pending reconnect on stop', () => {
    stream.start();
    FakeWebSocket.last.drop();
    stream.stop();
    jest.advanceTimersByTime(60000);
    expect(FakeWebSocket.created).toHaveLength(1);
  });

  it('reconnects at once when asked, and the back-off starts over', () => {
    stream.start();
    reconnectDelays(4);
    FakeWebSocket.last.drop();
    stream.reconnectNow();
    expect(FakeWebSocket.created).toHaveLength(6);
    expect(reconnectDelays(1)).toEqual([250]);
  });

  it('ignores "reconnect now" while open or stopped', () => {
    stream.reconnectNow();
    expect(FakeWebSocket.created).toHaveLength(0);
    stream.start();
    FakeWebSocket.last.open();
    stream.reconnectNow();
    expect(FakeWebSocket.created).toHaveLength(1);
  });

  it('does nothing after dispose', () => {
    stream.dispose();
    expect(stream.isDisposed).toBe(true);
    stream.start();
    expect(FakeWebSocket.created).toHaveLength(0);
  });
});
